"""Queuing a key message wakes the outbox workers of the other processes on the database at once
(PostgreSQL NOTIFY after commit, LISTEN in each process), rather than at their next tick."""

from __future__ import annotations

import threading

import pytest

from sluis.config import load_settings
from sluis.server.app import build_app
from tests.support.library import upload
from tests.support.waiting import wait_until


@pytest.mark.parametrize("engine", ["postgresql"])   # SQLite has one process per database: no NOTIFY
def test_a_published_delivery_wakes_the_worker_of_another_process(lib, engine):
    srv, app, clock = lib
    other = build_app(load_settings(srv.config, {}), clock=clock)    # another process's view
    try:
        woken = threading.Event()
        other.outbox.on_wake(woken.set)
        wait_until(woken.is_set, "the first wake (what was queued before it listened)", 10)
        woken.clear()
        upload(app)                                                    # publishes in this "process"
        wait_until(woken.is_set, "the other process's worker woken", 10)
    finally:
        other.close()

"""Outbox jobs taken with a lease, so several processes can drain one outbox: a job is worked by
one process at a time, a job held by a process that is gone (this host) or whose lease ran out
(any host) is taken over, and the janitor, the access monitor, the incidents tracker and the
notification sender each run once at a time. On both engines; the processes
here are Outbox objects with their own names, the next module's are real `sluis serve`s."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

from sluis.keydelivery.notifier import NotificationSender
from sluis.keydelivery.outbox import ALERT, MAYBE_SENT, PENDING, SENDING, Outbox
from sluis.server.core.holders import machine
from sluis.keydelivery.providers.console import ConsoleProvider
from sluis.retention.janitor import LOCK
from sluis.server.errors import Busy
from tests.support.library import sluis, upload
from tests.support.pg import both_engines  # noqa: F401  (these tests run on both engines)

ELSEWHERE = "node-b.example:4242:0a0b0c"   # a process on another host: only its lease's end frees its jobs


def _other(app: Any, clock: Any, owner: str) -> Outbox:
    """The outbox as another process sees it: same database, another lease holder."""
    return Outbox(app.settings, app.db, app.audit, clock, app.outbox.sealer, owner=owner)


def _dead_owner() -> str:
    """The lease name of a process of this host that has exited."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    return f"{machine()}:{child.stdout.strip()}:dead00"


def _sms(app: Any, delivery: Any) -> Any:
    [job] = [j for j in app.outbox.jobs(delivery.id) if j.kind == "sms"]
    return job


def test_a_job_is_worked_by_one_process_until_its_lease_runs_out(lib):
    _srv, app, clock = lib
    delivery = upload(app)
    other = _other(app, clock, ELSEWHERE)
    [taken] = other.take()
    assert taken.claimed_by == ELSEWHERE and taken.lease_until
    assert app.outbox.take() == []                                    # held by the other process
    assert app.outbox.claim(_sms(app, delivery), delivery.tenant_id, "genk") is None
    assert _sms(app, delivery).state == PENDING                        # untouched by the refusal

    clock.advance(seconds=app.settings.sms.lease + 1)                 # the other process went silent
    [again] = app.outbox.take()
    assert again.id == taken.id and again.claimed_by == app.outbox.owner
    claim = app.outbox.claim(again, delivery.tenant_id, "genk")
    assert claim is not None and claim.attempt == 1
    # the other process comes back late: it may no longer record anything for the job
    assert other.claim(taken, delivery.tenant_id, "genk") is None
    with app.db.writer() as tx:
        assert other.finish(tx, taken, state=PENDING) is False
    assert (_sms(app, delivery).state, _sms(app, delivery).claimed_by) == (SENDING, app.outbox.owner)


def test_an_attempt_in_flight_elsewhere_is_left_alone_until_its_lease_ends(lib):
    _srv, app, clock = lib
    delivery = upload(app)
    other = _other(app, clock, ELSEWHERE)
    [job] = other.take()
    assert other.claim(job, delivery.tenant_id, "genk") is not None   # the other process is calling Twilio
    assert app.outbox.reconcile() == []                                # not cut short: still within its lease
    assert _sms(app, delivery).state == SENDING
    clock.advance(seconds=app.settings.sms.lease + 1)
    [(settled, state)] = app.outbox.reconcile()
    assert settled.id == job.id and state == PENDING                   # the delivery waits: sent again
    assert "cut short" in (_sms(app, delivery).last_error or "")
    [record] = [r for r in app.audit.records() if r.event == "key.sms.interrupted"]
    assert record.detail["outcome"] == PENDING and record.detail["attempt"] == 1


def test_the_jobs_of_a_process_of_this_host_that_is_gone_are_taken_at_once(lib):
    _srv, app, clock = lib
    first = upload(app)
    second = upload(app, tenant="gent")
    dead = _other(app, clock, _dead_owner())
    taken = dead.take()
    assert {j.delivery_id for j in taken} == {first.id, second.id}
    assert dead.claim(_sms(app, first), first.tenant_id, "genk") is not None   # then it was killed
    # no waiting for the lease: the holder is gone
    [(settled, state)] = app.outbox.reconcile()
    assert settled.delivery_id == first.id and state == PENDING
    retaken = app.outbox.take()
    assert {j.delivery_id for j in retaken} == {first.id, second.id}
    assert all(j.claimed_by == app.outbox.owner for j in retaken)


def test_a_lease_of_an_earlier_process_with_this_pid_is_free(lib):
    """The same pid in the same PID namespace under another tag: an earlier process had it."""
    _srv, app, clock = lib
    upload(app)
    earlier = _other(app, clock, f"{machine()}:{os.getpid()}:000000")
    assert earlier.take()
    assert [j.claimed_by for j in app.outbox.take()] == [app.outbox.owner]


def test_an_interrupted_attempt_of_a_gone_process_for_a_removed_delivery_is_maybe_sent(lib):
    _srv, app, clock = lib
    delivery = upload(app)
    dead = _other(app, clock, _dead_owner())
    [job] = dead.take()
    assert dead.claim(job, delivery.tenant_id, "genk") is not None
    assert app.dropbox.remove(delivery, "withdrawn", actor="agency")
    [(_settled, state)] = app.outbox.reconcile()
    assert state == MAYBE_SENT and _sms(app, delivery).claimed_by is None


def test_two_processes_taking_at_once_never_take_the_same_job(lib):
    _srv, app, clock = lib
    delivery = upload(app)
    with app.db.writer() as tx:
        for n in range(60):
            app.outbox.alert(tx, delivery.id, reason=f"alert {n}")
    wanted = {j.id for j in app.outbox.jobs(delivery.id)}
    outboxes = [_other(app, clock, f"node-{n}.example:1:{n:06d}") for n in range(2)]
    taken: list[list[int]] = [[], []]
    errors: list[BaseException] = []

    def drain(n: int) -> None:
        try:
            while batch := outboxes[n].take(5):
                taken[n].extend(j.id for j in batch)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert not set(taken[0]) & set(taken[1])                          # never the same job twice
    assert sorted(taken[0] + taken[1]) == sorted(wanted)               # and every job once
    assert all(j.kind in ("sms", ALERT) for j in app.outbox.jobs(delivery.id))


def test_released_jobs_are_free_at_once(lib):
    _srv, app, clock = lib
    upload(app)
    other = _other(app, clock, ELSEWHERE)
    taken = other.take()
    assert taken and app.outbox.take() == []
    other.release(taken)
    assert [j.id for j in app.outbox.take()] == [j.id for j in taken]


def test_one_janitor_at_a_time(lib):
    srv, app, _clock = lib
    with app.db.try_lock(LOCK) as held:
        assert held
        report = app.janitor.run_once()
        assert report.skipped and "another janitor" in report.summary()
        cli = sluis(srv.config, "janitor", "run", env=srv.env)          # another process
        assert cli.returncode == 0, cli.stderr
        assert "another janitor is running" in cli.stdout
    [record] = [r for r in app.audit.records() if r.event == "janitor.run"]
    assert record.detail["skipped"] is True
    assert not app.janitor.run_once().skipped                          # free again once released


def _notification(app: Any) -> None:
    with app.db.writer() as tx:
        app.notifications.enqueue(tx, "sms", "+32470123456", "test", topic="test")


@pytest.mark.parametrize("lock", ["monitor", "incidents", "notifications"])
def test_one_monitor_tracker_and_notification_sender_at_a_time(lib, lock):
    """Each runs in every `serve` process; with the lock held elsewhere a pass does nothing (one
    access report, one incident per event, one copy of each message), and does its work after."""
    _srv, app, _clock = lib
    app.audit.record("auth.failure", actor="mallory", source="192.0.2.7:50122", method="password", reason="bad")
    _notification(app)
    sender = NotificationSender(app.settings, app.notifications, ConsoleProvider(), None)
    run = {"monitor": app.monitor.run_once, "incidents": app.tracker.run_once,
           "notifications": sender.run_once}[lock]
    with app.db.try_lock(lock) as held:
        assert held
        assert run() == 0
    assert run() > 0


def test_two_resends_at_once_queue_the_key_once(lib):
    """The once-per-interval check and its record are one step under the tenant's lock."""
    _srv, app, clock = lib
    delivery = upload(app)
    for _round in range(5):
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def resend() -> None:
            barrier.wait(10)
            try:
                app.outbox.resend(delivery.id, actor="admin:test")
                outcomes.append("queued")
            except Busy:
                outcomes.append("busy")

        threads = [threading.Thread(target=resend) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(outcomes) == ["busy", "queued"]
        clock.advance(seconds=app.settings.sms.resend_interval + 1)
    assert len([r for r in app.audit.records() if r.event == "key.resend"]) == 5


def test_a_process_of_another_pid_namespace_is_never_judged_by_its_pid(lib):
    """Containers may share a host name; a pid of another namespace says nothing: its lease expires."""
    _srv, app, clock = lib
    upload(app)
    elsewhere = _other(app, clock, _dead_owner().replace(machine(), f"{socket.gethostname()}~1"))
    assert elsewhere.take()
    assert app.outbox.take() == []
    clock.advance(seconds=app.settings.sms.lease + 1)
    assert app.outbox.take()

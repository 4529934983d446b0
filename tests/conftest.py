"""Shared fixtures: a real sluis server (subprocess on loopback) with two municipalities."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from sluis.config import load_settings
from sluis.server.app import build_app
from tests.support.library import FAST, FakeClock
from tests.support.server import SluisServer
from tests.support.twilio_standin import TwilioStandIn


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Factory for servers with custom settings: make_server(overrides={...})."""
    made: list[SluisServer] = []

    def make(overrides: dict | None = None, env: dict | None = None, name: str = "srv") -> SluisServer:
        server = SluisServer(tmp_path / name, overrides, env)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def server(make_server) -> SluisServer:
    """A running server: tenants genk and gent, sender 'agency', recipients 'genk-clerk', 'gent-clerk'."""
    return make_server().standard().start()


@pytest.fixture
def lib(make_server):
    """(server setup, app on a fake clock, the clock): the standard tenants and users, no process."""
    srv = make_server(FAST).standard()
    clock = FakeClock()
    app = build_app(load_settings(srv.config, {}), clock=clock)
    yield srv, app, clock
    app.close()


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    """The Twilio stand-in; a message is 'delivered' at its first poll."""
    with TwilioStandIn(polls_to_deliver=1) as standin:
        yield standin

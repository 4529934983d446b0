"""Shared fixtures: a real sluis server (subprocess on loopback) with two municipalities."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.server import SluisServer


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

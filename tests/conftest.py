"""Shared fixtures: a real sluis server (subprocess on loopback) with two municipalities."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from sluis.config import load_settings
from sluis.server.app import build_app
from tests.support.library import FAST, FakeClock
from tests.support.moto import CREDENTIALS, Bucket, MotoServer
from tests.support.pg import ENGINES, Cluster, start_cluster
from tests.support.server import SluisServer
from tests.support.twilio_standin import TwilioStandIn


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """The session's throwaway PostgreSQL cluster (tests/support/pg.py), started on first use."""
    yield from start_cluster()


@pytest.fixture
def engine() -> str:
    """The state database engine of `make_server`'s servers: SQLite, or all on PostgreSQL with
    SLUIS_TEST_ENGINE=postgresql; a module runs on both by importing `tests.support.pg.both_engines`."""
    chosen = os.environ.get("SLUIS_TEST_ENGINE", "sqlite")
    if chosen not in ENGINES:
        raise pytest.UsageError(f"SLUIS_TEST_ENGINE={chosen!r}: expected one of {', '.join(ENGINES)}")
    return chosen


@pytest.fixture
def new_database(engine: str, request: pytest.FixtureRequest) -> Iterator:
    """Factory: a fresh `[database] url` for this test's engine ("" for SQLite in the data dir)."""
    made: list[str] = []
    cluster: Cluster | None = request.getfixturevalue("pg_cluster") if engine == "postgresql" else None

    def new(*, migrated: bool = True) -> str:
        if cluster is None:
            return ""
        made.append(cluster.new_database(migrated=migrated))
        return made[-1]

    yield new
    for url in made:
        assert cluster is not None
        cluster.drop(url)


@pytest.fixture
def make_server(tmp_path: Path, new_database) -> Iterator:
    """Factory for servers with custom settings: make_server(overrides={...}); each server has a
    database of its own on the test's engine unless overrides name one ([database] url)."""
    made: list[SluisServer] = []

    def make(overrides: dict | None = None, env: dict | None = None, name: str = "srv") -> SluisServer:
        url = (overrides or {}).get("database", {}).get("url")
        if url is None and (url := new_database()):
            overrides = {**(overrides or {}), "database": {**(overrides or {}).get("database", {}), "url": url}}
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


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoServer]:
    """moto's standalone S3 server on loopback for the session; AWS credentials in the environment
    (the standard way, inherited by `sluis serve` subprocesses) while it runs."""
    try:
        import moto  # noqa: F401
    except ImportError:
        if os.environ.get("SLUIS_REQUIRE_CLIENTS") == "1":
            pytest.fail("moto[server] is not installed, and SLUIS_REQUIRE_CLIENTS=1 requires it")
        pytest.skip("moto[server] is not installed")
    saved = {key: os.environ.get(key) for key in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = MotoServer().start()
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bucket(moto_s3: MotoServer) -> Bucket:
    """A fresh bucket on the session's moto server."""
    return Bucket(moto_s3)

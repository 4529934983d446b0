"""A throwaway PostgreSQL cluster for the tests: initdb into a temp dir (as the unprivileged
`postgres` user when we are root: initdb refuses root), socket only, fsync off; started once per
test session, one fresh database per test (CREATE DATABASE … TEMPLATE a migrated one), stopped
at the end. Absent PostgreSQL skips, unless SLUIS_REQUIRE_CLIENTS is set."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

ENGINES = ("sqlite", "postgresql")
TEMPLATE = "sluis_template"

SETTINGS = """
listen_addresses = ''
unix_socket_directories = '{socket}'
max_connections = 300
shared_buffers = 32MB
log_min_messages = warning
"""
FAST = """
fsync = off
synchronous_commit = off
full_page_writes = off
"""


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding initdb, pg_ctl and postgres (or PATH's)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                        if Path(p).parent.name.isdigit() else 0, reverse=True)
    for candidate in candidates:
        if all((Path(candidate) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class Cluster:
    """One running cluster, reached through its socket directory; fsync off unless `durable`
    (the bench measures both)."""

    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="sluis-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._names = itertools.count(1)
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:       # initdb and postgres refuse root
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self._tool("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                   "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(SETTINGS.format(socket=self.root) + ("" if durable else FAST))
        self._tool("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.started = True
        self._template()

    def _tool(self, name: str, *args: str) -> None:
        result = subprocess.run([str(self.bin_dir / name), *args], capture_output=True, text=True,
                                timeout=120, cwd=self.root, **self._run_as)
        if result.returncode != 0:
            raise RuntimeError(f"{name} failed ({result.returncode}): {result.stdout}{result.stderr}"
                               f"{self.log.read_text() if self.log.exists() else ''}")

    def url(self, database: str) -> str:
        return f"postgresql:///{database}?host={self.root}&user=postgres"

    def admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def _template(self) -> None:
        """A database migrated once; each test's database is a copy of it."""
        from sluis.server.core.pg_store import PostgresStore

        self.admin(f"CREATE DATABASE {TEMPLATE}")
        store = PostgresStore(self.url(TEMPLATE), pool_size=1)
        store.migrate()
        store.close()

    def new_database(self, *, migrated: bool = True) -> str:
        """A fresh database (a copy of the migrated template, or empty); its URL."""
        name = f"sluis_test_{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE if migrated else 'template0'}")
        return self.url(name)

    def drop(self, url: str) -> None:
        name = url.split("///", 1)[1].split("?", 1)[0]
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        if self.started:
            self._tool("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> Iterator[Cluster]:
    """The session fixture's body: start, yield, stop; skip (or fail, under
    SLUIS_REQUIRE_CLIENTS) where PostgreSQL is not installed."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        if os.environ.get("SLUIS_REQUIRE_CLIENTS"):
            pytest.fail("PostgreSQL (initdb, pg_ctl) is not installed; apt-get install postgresql")
        pytest.skip("PostgreSQL is not installed")
    cluster = Cluster(bin_dir)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=ENGINES, name="engine")
def both_engines(request: pytest.FixtureRequest) -> str:
    """Import into a test module to run its tests (those that build a server or app) on both
    engines: `from tests.support.pg import both_engines  # noqa: F401`."""
    return str(request.param)


class RawPostgres:
    """What a test's `sqlite3.connect(state.db)` was for, on PostgreSQL: autocommit statements in
    the repositories' SQL (`?`), to look at or tamper with the state behind sluis's back."""

    def __init__(self, url: str) -> None:
        import psycopg

        from sluis.server.core import pg_store

        self._run = pg_store._run
        self.conn = psycopg.connect(url, autocommit=True, row_factory=pg_store._row_factory)

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._run(self.conn, sql, params)

    def close(self) -> None:
        self.conn.close()


def raw_db(server: Any) -> Any:
    """An autocommit connection to `server`'s state database, whichever the engine (close it)."""
    import sqlite3

    from sluis.config import load_settings

    url = load_settings(server.config, {}).database.url
    if url:
        return RawPostgres(url)
    conn = sqlite3.connect(server.data_dir / "state.db", isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn

"""PostgreSQL only: races between sluis processes sharing one database (issue 9) — each test holds
the lock the processes contend for until all of them are waiting on it, so they really run at
once — and the schema compared with SQLite's."""

from __future__ import annotations

import copy
import io
import re
import subprocess
import sqlite3
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sluis.server.core.pg_store import MIGRATE_LOCK, lock_key
from sluis.server.cli.init import init_setup
from sluis.server.core.schema import EXPECTED_TABLES, MIGRATIONS
from sluis.server.core.store import Conflict
from tests.support.library import SLUIS, sluis
from tests.support.pg import raw_db
from tests.support.server import SluisServer
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def engine() -> str:
    return "postgresql"


def url_of(server: SluisServer) -> str:
    match = re.search(r'^url = "(postgresql://[^"]+)"$', server.config.read_text(), re.MULTILINE)
    assert match, "the setup is not on PostgreSQL"
    return match.group(1)


def waiting_backends(conn: psycopg.Connection[Any], locktype: str | None = None) -> int:
    """Backends of this database waiting for a lock (of `locktype`, or any)."""
    row = conn.execute("SELECT COUNT(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                       " WHERE NOT l.granted AND d.datname = current_database()"
                       " AND (%s::text IS NULL OR l.locktype = %s::text)", (locktype, locktype)).fetchone()
    if row is None or locktype is not None:
        return int(row[0]) if row else 0
    # a row lock waits on the holder's transaction id, which pg_locks shows without a database
    extra = conn.execute("SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'").fetchone()
    return int(row[0]) + (int(extra[0]) if extra else 0)


def columns(server) -> dict[str, list[str]]:
    with closing(raw_db(server)) as conn:
        if isinstance(conn, sqlite3.Connection):
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {t: [c[1] for c in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
        found: dict[str, list[str]] = {}
        for table, column in conn.execute("SELECT table_name, column_name FROM information_schema.columns"
                                          " WHERE table_schema = current_schema() ORDER BY table_name,"
                                          " ordinal_position").fetchall():
            found.setdefault(table, []).append(column)
        found.pop("schema_migrations")
        return found


def test_both_engines_get_the_same_tables_and_columns(make_server):
    on_pg = make_server(name="pg")
    on_sqlite = make_server(overrides={"database": {"url": ""}}, name="sqlite")
    assert columns(on_pg) == columns(on_sqlite)
    assert set(columns(on_pg)) == set(EXPECTED_TABLES)


def test_init_refuses_a_database_that_holds_a_setup(make_server, tmp_path):
    server = make_server()
    url = url_of(server)
    with pytest.raises(FileExistsError, match="already holds a setup"):
        init_setup(tmp_path / "second", {"database": {"url": url}})
    assert not (tmp_path / "second" / "sluis.toml").exists()


def test_two_processes_migrating_at_once_migrate_once(make_server, new_database):
    server = make_server()
    fresh = new_database(migrated=False)
    config = server.config.with_name("fresh.toml")
    config.write_text(server.config.read_text().replace(url_of(server), fresh))
    config.chmod(0o600)
    with psycopg.connect(fresh, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(MIGRATE_LOCK),))
        procs = [subprocess.Popen([sys.executable, "-m", "sluis.server.cli.main", "-c", str(config), "migrate"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
                 for _ in range(2)]
        wait_until(lambda: waiting_backends(holder, "advisory") >= 2, "both migrations waiting on the lock", 60)
        holder.execute("SELECT pg_advisory_unlock(%s)", (lock_key(MIGRATE_LOCK),))
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], outputs
        applied = [out for out in outputs if "applied 0001_foundation" in out]
        assert len(applied) == 1 and any("up to date" in out for out in outputs), outputs
        versions = [r[0] for r in holder.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [m.number for m in MIGRATIONS]
        events = [r[0] for r in holder.execute("SELECT event FROM audit WHERE event = 'database.migrate'")]
        assert events == ["database.migrate"]
    check = sluis(config, "migrate", "--check")
    assert check.returncode == 0 and "up to date" in check.stdout, check.stdout + check.stderr


def twin(server: SluisServer, name: str) -> SluisServer:
    """A second `sluis serve` on the same setup: one database, one data directory."""
    other = copy.copy(server)
    other.env = {**server.env, "SLUIS_NODE": name}   # a node of its own (server/core/nodes.py)
    other.process = None
    other._app = None
    other.log_path = server.root / f"{name}.log"
    return other


def test_two_servers_publishing_to_one_tenant_at_once_leave_one_waiting(make_server):
    first = make_server().standard().start()
    second = twin(first, "second").start()
    try:
        race_two_publishes(first, second)
    finally:
        second.close()


def race_two_publishes(first: SluisServer, second: SluisServer) -> None:
    outcomes: dict[str, str] = {}

    def put(server: SluisServer, name: str) -> None:
        try:
            with server.paramiko("agency") as client:
                client.putfo(io.BytesIO(f"rijksregisternummer\n{name}\n".encode() * 200), f"/genk/{name}")
            outcomes[name] = "published"
        except OSError as exc:
            outcomes[name] = f"refused: {exc}"

    with closing(raw_db(first)) as holder:
        tenant = holder.execute("SELECT id FROM tenants WHERE name = 'genk'").fetchone()[0]
        with holder.conn.transaction():
            holder.execute("SELECT id FROM tenants WHERE id = ? FOR UPDATE", (tenant,))
            threads = [threading.Thread(target=put, args=(server, name))
                       for server, name in ((first, "lijst-a.csv"), (second, "lijst-b.csv"))]
            for thread in threads:
                thread.start()
            wait_until(lambda: waiting_backends(holder.conn) >= 2, "both publishes waiting on the tenant", 60,
                       context=lambda: first.log[-2000:] + second.log[-2000:])
        for thread in threads:
            thread.join(60)
        assert sorted(outcomes.values())[0] == "published", outcomes
        assert sorted(outcomes.values())[1].startswith("refused"), outcomes
        waiting = holder.execute("SELECT name FROM deliveries WHERE tenant_id = ? AND state = 'published'",
                                 (tenant,)).fetchall()
        assert len(waiting) == 1 and outcomes[waiting[0][0]] == "published", (waiting, outcomes)
        aborted = [r[0] for r in holder.execute("SELECT detail FROM audit WHERE event = 'upload.abort'")]
        assert len(aborted) == 1, "the refused upload left no audit record"
        assert "still has a list waiting" in aborted[0], aborted   # refused by the policy, not the index


def test_index_refuses_a_second_waiting_delivery_even_without_the_lock(make_server):
    """The backstop: a writer that skipped the tenant lock still cannot leave two lists waiting."""
    server = make_server().standard()
    with closing(raw_db(server)) as conn:
        tenant, sender = conn.execute("SELECT t.id, u.id FROM tenants t, users u WHERE t.name = 'genk'"
                                      " AND u.name = 'agency'").fetchone()
        insert = ("INSERT INTO deliveries (id, tenant_id, sender_id, name, stored_name, format, state, plain_size,"
                  " stored_size, plain_sha256, stored_sha256, blob_key, created_at, expires_at)"
                  " VALUES (?, ?, ?, ?, ?, 'age', ?, 1, 1, '', '', '', '', '')")
        conn.execute(insert, ("d-1", tenant, sender, "a.csv", "a.csv.age", "published"))
        conn.execute(insert, ("d-2", tenant, sender, "b.csv", "b.csv.age", "collected"))
        with pytest.raises(Conflict, match="deliveries_one_waiting"):
            conn.execute(insert, ("d-3", tenant, sender, "c.csv", "c.csv.age", "published"))


def test_500_audit_appends_from_two_processes_leave_one_chain(make_server):
    server = make_server()
    result = subprocess.run([sys.executable, "bench/audit_processes.py", "--config", str(server.config),
                             "--processes", "2", "--count", "500"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"audit log intact: 501 records, head #501 ", result.stdout), result.stdout
    with closing(raw_db(server)) as conn:
        sources = dict(conn.execute("SELECT source, COUNT(*) FROM audit WHERE event = 'bench.append'"
                                    " GROUP BY source").fetchall())
    assert sources == {"proc-0": 250, "proc-1": 250}
    verify = sluis(server.config, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_init_with_database_puts_the_state_in_postgresql(new_database, tmp_path):
    url = new_database(migrated=False)
    created = subprocess.run([*SLUIS, "init", str(tmp_path / "setup"), "--database", url], capture_output=True,
                             text=True, timeout=60)
    assert created.returncode == 0, created.stdout + created.stderr
    config = tmp_path / "setup" / "sluis.toml"
    assert f'url = "{url}"' in config.read_text()
    assert not (tmp_path / "setup" / "state.db").exists()
    assert sluis(config, "migrate", "--check").returncode == 0
    added = sluis(config, "tenant", "add", "genk", "--phone", "+32470123456")
    assert added.returncode == 0, added.stdout + added.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT name FROM tenants").fetchall() == [("genk",)]
        assert [r[0] for r in conn.execute("SELECT event FROM audit ORDER BY seq")] == ["sluis.init", "tenant.add"]
    bad = subprocess.run([*SLUIS, "init", str(tmp_path / "other"), "--database", "mysql://x"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "PostgreSQL URI" in bad.stderr


def test_the_orphan_sweep_waits_for_a_publish_in_progress(lib):
    """A publish renames its blob inside its transaction; a sweep in another process must not see
    the blob before the row, so it waits for every tenant-locked writer."""
    server, app, _clock = lib
    orphan = server.data_dir / "boxes" / "genk" / "d-orphan"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x")
    swept: list[int] = []
    with closing(raw_db(server)) as holder:
        with holder.conn.transaction():
            holder.execute("SELECT id FROM tenants WHERE name = 'genk' FOR UPDATE")
            sweeper = threading.Thread(target=lambda: swept.append(app.dropbox.sweep_orphans()))
            sweeper.start()
            wait_until(lambda: waiting_backends(holder.conn) >= 1, "the sweep waiting for the publish", 30)
            assert orphan.exists() and sweeper.is_alive()
        sweeper.join(30)
    assert swept == [1] and not orphan.exists()

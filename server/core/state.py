"""The SQLite state store: one connection per thread, WAL, busy timeout, BEGIN IMMEDIATE writes.

Everything the core keeps (tenants, users, deliveries, outbox, audit) goes through `Database`;
a PostgreSQL store would implement the same `transaction()`/`query()` surface.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlite_utils

from .schema import EXPECTED_TABLES, MIGRATIONS

BUSY_TIMEOUT_MS = 10_000


class Tx:
    """An open write transaction; `after_commit` runs callbacks only once it has committed."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.hooks: list[Callable[[], None]] = []

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def after_commit(self, hook: Callable[[], None]) -> None:
        self.hooks.append(hook)


class Database:
    """Thread-safe access to the state database (a connection per thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @property
    def utils(self) -> sqlite_utils.Database:
        """sqlite-utils over this thread's connection, for reads and introspection.

        Writes go through `transaction()` instead: sqlite-utils' write helpers commit on their
        own (`with conn:`), which would end our BEGIN IMMEDIATE transaction half-way.
        """
        return sqlite_utils.Database(self._connection())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A write transaction: BEGIN IMMEDIATE takes the write lock up front, so no deadlocks."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        tx = Tx(conn)
        try:
            yield tx
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        for hook in tx.hooks:
            hook()

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Cursor:
        """A read outside any transaction (same surface as `Tx.execute`)."""
        return self._connection().execute(sql, params)

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        return self._connection().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Row | None:
        return self._connection().execute(sql, params).fetchone()

    def migrate(self) -> int:
        """Apply the migrations this database has not seen; returns the schema version."""
        with self.transaction() as tx:
            conn = tx.conn
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
        missing = set(EXPECTED_TABLES) - set(self.utils.table_names())
        if missing:
            raise RuntimeError(f"{self.path}: schema is missing tables {sorted(missing)} after migration")
        return len(MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()


def open_database(path: Path) -> Database:
    """Open (creating if needed, mode 0600) and migrate the state database."""
    if not path.exists():
        path.touch(mode=0o600)
    db = Database(path)
    db.migrate()
    return db

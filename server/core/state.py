"""The SQLite store: one connection per thread, WAL, busy timeout, BEGIN IMMEDIATE writes.

Implements `store.Store`; SQLite has one writer at a time, so every `writer()` lock is the
database lock and `lock_audit` has nothing to add.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from .schema import EXPECTED_TABLES, MIGRATIONS
from .store import Conflict

BUSY_TIMEOUT_MS = 10_000


class Tx:
    """An open write transaction; `after_commit` runs callbacks only once it has committed."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.hooks: list[Callable[[], None]] = []

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc

    def lock_audit(self) -> None:
        """BEGIN IMMEDIATE already holds the one write lock."""

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

    @contextlib.contextmanager
    def writer(self, *, tenant: int | None = None) -> Iterator[Tx]:
        """A write transaction: BEGIN IMMEDIATE takes the write lock up front, so no deadlocks.

        `tenant` names the row the caller checks-then-acts on; SQLite's single writer already
        covers it."""
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

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """A read outside any transaction (same surface as `Tx.execute`)."""
        return self._connection().execute(sql, params)

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        return self._connection().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        return self._connection().execute(sql, params).fetchone()

    def migrate(self) -> int:
        """Apply the migrations this database has not seen; returns the schema version."""
        with self.writer() as tx:
            conn = tx.conn
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
        tables = {row[0] for row in self.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = set(EXPECTED_TABLES) - tables
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

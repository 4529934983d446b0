"""The SQLite store: one connection per thread, WAL, busy timeout, BEGIN IMMEDIATE writes.

Implements `store.Store`; SQLite has one writer at a time, so every `writer()` lock is the
database lock and `lock_audit` has nothing to add. One process serves a SQLite database, so
`notify`/`listen` are no-ops; `try_lock` still holds across processes (a CLI janitor run beside
`serve`) through an fcntl lock file beside the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from .schema import EXPECTED_TABLES, SQLITE, pending
from .store import Conflict, check_read

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

    def notify(self, channel: str) -> None:
        """No other process shares a SQLite database: nobody to wake."""


class Database:
    """Thread-safe access to the state database (a connection per thread)."""

    dialect = SQLITE

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
    def writer(self, *, tenant: int | None = None, exclusive: bool = False) -> Iterator[Tx]:
        """A write transaction: BEGIN IMMEDIATE takes the write lock up front, so no deadlocks.

        `tenant` names the row the caller checks-then-acts on, `exclusive` asks for all of them;
        SQLite's single writer already covers both."""
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
        """A read outside any transaction (same surface as `Tx.execute`); writes go through `writer()`."""
        return self._connection().execute(check_read(sql), params)

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        return self.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        return self.execute(sql, params).fetchone()

    def migrate(self) -> list[str]:
        """Apply the migrations this database has not seen, under BEGIN IMMEDIATE (two processes
        starting at once migrate once); the names of those applied."""
        applied: list[str] = []
        with self.writer() as tx:
            conn = tx.conn
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for migration in pending(version, str(self.path)):
                applied.append(migration.apply(conn.execute, SQLITE, sqlite3.Error))
                conn.execute(f"PRAGMA user_version = {migration.number}")
        tables = {row[0] for row in self.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = set(EXPECTED_TABLES) - tables
        if missing:
            raise RuntimeError(f"{self.path}: schema is missing tables {sorted(missing)} after migration")
        return applied

    def version(self) -> int:
        """How many migrations this database has seen."""
        return int(self.execute("PRAGMA user_version").fetchone()[0])

    @contextlib.contextmanager
    def try_lock(self, name: str) -> Iterator[bool]:
        """One holder across processes: an exclusive, non-blocking fcntl lock on
        `<database>.<name>.lock` (released by the kernel if the holder dies)."""
        if not re.fullmatch(r"[a-z0-9_-]{1,40}", name):
            raise ValueError(f"lock name {name!r}: expected lower-case letters, digits, - and _")
        fd = os.open(f"{self.path}.{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def listen(self, channel: str, callback: Callable[[], None]) -> None:
        """No other process writes a SQLite database: nothing to listen for."""

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()


def open_database(path: Path, *, migrate: bool = True) -> Database:
    """Open (creating if needed, mode 0600) and migrate the state database."""
    if not path.exists():
        path.touch(mode=0o600)
    db = Database(path)
    if migrate:
        db.migrate()
    return db

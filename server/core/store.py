"""The store boundary: what every repository needs of a database, whichever engine is behind it.

Repositories in `server/core/` own every SQL statement and talk to a `Store`; SQLite
(`state.py`) and PostgreSQL implement it. SQL uses `?` placeholders and the subset both engines
share (`RETURNING`, `ON CONFLICT`, partial indexes); an engine translates what it must.

Each write states the lock it needs when it opens: `store.writer()` serialises against other
writers as the engine can (SQLite: BEGIN IMMEDIATE, one writer at a time); `writer(tenant=id)`
also locks that tenant's row (PostgreSQL: SELECT … FOR UPDATE), for check-then-act on one
tenant (publish, the yearly limit). The audit chain takes its own lock inside `append`
(`tx.lock_audit()`, PostgreSQL: a transaction advisory lock), so two appends never read the
same head.

On PostgreSQL a failed statement (a `Conflict` included) spoils its transaction: a repository
that catches `Conflict` must leave the writer (raise), as every one does, not write on.
Processes that share one database coordinate through the store too: `try_lock(name)` gives one
holder across processes (the janitor), `tx.notify(channel)` wakes `listen`ers in other processes
once the transaction commits (the outbox). On SQLite, one process per database, both are local.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Protocol, Sequence

Params = Sequence[Any] | dict[str, Any]


class Conflict(Exception):
    """A write broke a uniqueness or foreign-key rule (sqlite3.IntegrityError, psycopg's
    IntegrityError): the one storage error a repository is expected to catch and name."""


class Row(Protocol):
    """A result row: by column name and by position (sqlite3.Row, and the PostgreSQL row)."""

    def __getitem__(self, key: int | str) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...


class Reader(Protocol):
    """What both a `Store` (autocommit reads) and an open `Tx` answer."""

    def execute(self, sql: str, params: Params = ()) -> Cursor: ...


class Tx(Reader, Protocol):
    """An open write transaction; `after_commit` hooks run only once it has committed."""

    hooks: list[Callable[[], None]]   # the after_commit hooks; a rolled-back savepoint cuts its own off

    def after_commit(self, hook: Callable[[], None]) -> None: ...

    def notify(self, channel: str) -> None:
        """Wake the store's `listen`ers on `channel` once this transaction commits (PostgreSQL:
        NOTIFY, delivered to every process; SQLite: nothing, there is no other process)."""

    def lock_audit(self) -> None:
        """Serialise audit appends until commit (a no-op where writers are already serial)."""


class Store(Reader, Protocol):
    """A database the core keeps its state in."""

    dialect: str    # "sqlite" | "postgresql" (schema.SQLITE, schema.POSTGRESQL)

    def writer(self, *, tenant: int | None = None,
               exclusive: bool = False) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction. `tenant`: lock that tenant's row first (check-then-act on one
        tenant). `exclusive`: wait for every tenant-locked writer and hold new ones off until
        commit (the orphan sweep, which must not see a publish half done)."""
        ...

    def query(self, sql: str, params: Params = ()) -> list[Any]: ...

    def query_one(self, sql: str, params: Params = ()) -> Any: ...

    def migrate(self) -> list[str]:
        """Apply the migrations the database has not seen, under a lock so that processes starting
        at once migrate once; the names of those this call applied (none: it was up to date)."""
        ...

    def version(self) -> int:
        """How many migrations the database has seen."""
        ...

    def try_lock(self, name: str) -> contextlib.AbstractContextManager[bool]:
        """Hold the lock `name` for the `with` block if no process holds it (yields True), else
        yield False at once. PostgreSQL: pg_try_advisory_lock; SQLite: a lock file beside it."""
        ...

    def listen(self, channel: str, callback: Callable[[], None]) -> None:
        """Call `callback` (in a store thread) whenever a transaction that `notify`d `channel`
        commits, in any process, and once each time listening (re)starts, for what was notified
        while not listening; until `close`. A no-op on SQLite (one process)."""

    def close(self) -> None: ...


_WRITES = ("INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "REPLACE")


def check_read(sql: str) -> str:
    """Refuse a write outside `writer()`: no hidden autocommit writes (it would skip the locks)."""
    if sql.lstrip()[:7].upper().startswith(_WRITES):
        raise RuntimeError(f"a write outside store.writer(): {sql[:60]!r}")
    return sql


def rows(conn: Reader, sql: str, params: Params = ()) -> Iterator[Any]:
    """Iterate a query's rows on a store or inside a transaction."""
    yield from conn.execute(sql, params).fetchall()

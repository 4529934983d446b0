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

    def lock_audit(self) -> None:
        """Serialise audit appends until commit (a no-op where writers are already serial)."""


class Store(Reader, Protocol):
    """A database the core keeps its state in."""

    def writer(self, *, tenant: int | None = None) -> contextlib.AbstractContextManager[Tx]: ...

    def query(self, sql: str, params: Params = ()) -> list[Any]: ...

    def query_one(self, sql: str, params: Params = ()) -> Any: ...

    def migrate(self) -> int: ...

    def close(self) -> None: ...


def rows(conn: Reader, sql: str, params: Params = ()) -> Iterator[Any]:
    """Iterate a query's rows on a store or inside a transaction."""
    yield from conn.execute(sql, params).fetchall()

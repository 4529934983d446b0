"""Which store holds the state: `[database] url` names PostgreSQL; empty means SQLite in the
data directory (the default). Opening applies any migrations the database has not seen."""

from __future__ import annotations

import re
from pathlib import Path

from ...config.settings import DatabaseSettings
from .state import open_database
from .store import Store


MIGRATE_EVENT = "database.migrate"   # audited by the process that applied migrations


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL could not be reached or refused us; the message names where, never a password."""


def open_store(database: DatabaseSettings, sqlite_path: Path, *, migrate: bool = True) -> Store:
    """The configured store, migrated unless `migrate` is false (`sluis migrate --check`)."""
    if not database.url:
        return open_database(sqlite_path, migrate=migrate)
    import psycopg   # only PostgreSQL setups pay for the import

    from .pg_store import PostgresStore

    try:
        store = PostgresStore(database.url, pool_size=database.pool_size)
    except (psycopg.Error, OSError) as exc:   # psycopg_pool.PoolTimeout is a psycopg.Error
        raise DatabaseUnavailable(f"cannot connect to the PostgreSQL database {describe(database.url)}: "
                                  f"{exc}") from None
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store


def describe(url: str) -> str:
    """The URL or connection string without its password, for messages and logs."""
    url = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", url)

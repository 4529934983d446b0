"""`sluis migrate`: apply the schema migrations the state database has not seen (serve applies
them at start too); `--check` only says whether any are pending."""

from __future__ import annotations

from typing import Any

from ..app import build_app
from ..core.schema import MIGRATIONS
from ..core.stores import open_store
from .common import operator


def cmd_migrate(args: Any) -> int:
    settings = args.settings
    store = open_store(settings.database, settings.database_path, migrate=False)
    try:
        before = store.version() if _has_schema(store) else 0
        latest = MIGRATIONS[-1].number
        where = "PostgreSQL" if settings.database.url else str(settings.database_path)
        if args.check:
            pending = [f"{m.number:04d}_{m.name}" for m in MIGRATIONS[before:]]
            print(f"{where}: schema version {before} of {latest}"
                  + (f"; pending: {', '.join(pending)}" if pending else "; up to date"))
            return 1 if pending else 0
        after = store.migrate()
    finally:
        store.close()
    print(f"{where}: schema version {after}" + (f" (was {before})" if after != before else ", up to date"))
    if after != before:
        app = build_app(settings)
        try:
            actor = operator()
            app.audit.record("database.migrate", actor=actor.name, source=actor.source,
                             version_from=before, version_to=after)
        finally:
            app.close()
    return 0


def _has_schema(store: Any) -> bool:
    """A brand-new PostgreSQL database has no schema_migrations table yet."""
    if store.dialect != "postgresql":
        return True
    return store.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL")[0]


def add_database_commands(commands: Any, command: Any) -> None:
    migrate = command(commands, "migrate", cmd_migrate, "apply pending schema migrations",
                      "Apply the schema migrations the state database (SQLite, or PostgreSQL named by "
                      "[database] url) has not seen, under a lock, so processes starting at once migrate "
                      "once. serve applies them at start too. Audited (database.migrate).")
    migrate.add_argument("--check", action="store_true",
                         help="apply nothing; exit 1 if migrations are pending")

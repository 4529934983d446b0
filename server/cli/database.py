"""`sluis migrate`: apply the schema migrations the state database has not seen (serve applies
them at start too); `--check` only says whether any are pending."""

from __future__ import annotations

from typing import Any

from ..app import build_app
from ..core.schema import MIGRATIONS
from ..core.stores import open_store


def cmd_migrate(args: Any) -> int:
    settings = args.settings
    where = "PostgreSQL" if settings.database.url else str(settings.database_path)
    store = open_store(settings.database, settings.database_path, migrate=False)
    try:
        before = store.version()
    finally:
        store.close()
    if args.check:
        pending = [f"{m.number:04d}_{m.name}" for m in MIGRATIONS[before:]]
        print(f"{where}: schema version {before} of {MIGRATIONS[-1].number}"
              + (f"; pending: {', '.join(pending)}" if pending else "; up to date"))
        return 1 if pending else 0
    app = build_app(settings)   # migrates under the lock and audits what it applied
    app.close()
    print(f"{where}: schema version {MIGRATIONS[-1].number}"
          + (f"; applied {', '.join(app.migrated)}" if app.migrated else ", up to date"))
    return 0


def add_database_commands(commands: Any, command: Any) -> None:
    migrate = command(commands, "migrate", cmd_migrate, "apply pending schema migrations",
                      "Apply the schema migrations the state database (SQLite, or PostgreSQL named by "
                      "[database] url) has not seen, under a lock, so processes starting at once migrate "
                      "once. serve applies them at start too. Audited (database.migrate).")
    migrate.add_argument("--check", action="store_true",
                         help="apply nothing; exit 1 if migrations are pending")

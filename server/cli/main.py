"""The `sluis` command: a thin layer over the library. Each command's help is its documentation."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from ...config import ConfigError, default_config_path, load_settings
from ...keydelivery.sealing import KeyFileError
from .. import logsafe
from ..core.receiptkey import ReceiptKeyError
from ..errors import SluisError
from ..core.schema import MigrationFailed
from ..core.stores import DatabaseUnavailable
from . import admin, bans, database, incidents, ops, receipts, report

log = logging.getLogger("sluis")
SUBCOMMAND_GROUPS = ("tenant", "user", "key", "audit", "janitor", "delivery", "incidents", "bans", "receipt")


def _config_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="CONFIG",
                        help="configuration file (default: $SLUIS_CONFIG, then ./sluis.toml)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluis", description="Secure SFTP drop boxes: encrypted at rest, key by SMS, gone once collected.")
    parser.add_argument("-c", "--config", metavar="CONFIG",
                        help="configuration file (default: $SLUIS_CONFIG, then ./sluis.toml)")
    common = _config_parent()
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group, name: str, func: Callable, help_text: str, description: str | None = None):
        sub = group.add_parser(name, parents=[common], help=help_text, description=description or help_text)
        sub.set_defaults(func=func)
        return sub

    init = command(commands, "init", ops.cmd_init, "create a new setup in DIR",
                   "Write DIR/sluis.toml (every setting with its default), an ed25519 host key (0600), the "
                   "secret key that seals passphrases, the audit key (both 0600) and the state database. "
                   "Refuses to overwrite.")
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument("--database", metavar="URL", default="",
                      help="keep the state in this PostgreSQL database (libpq URI or connection string; "
                           "README \"PostgreSQL\") instead of SQLite in DIR")
    command(commands, "serve", ops.cmd_serve, "run the SFTP server with its workers",
            "Run the SFTP server, the key-delivery worker and the janitor in one process. Logs go to "
            "stderr; SIGTERM stops it cleanly (uploads in flight are discarded).")
    # `sluis send` runs on the agency's machine, without a sluis.toml: main() hands it its own
    # arguments before parsing (this entry is for `sluis --help`).
    commands.add_parser("send", add_help=False, help="send lists to municipalities (the agency's client; "
                        "see `sluis send --help`)")
    database.add_database_commands(commands, command)
    admin.add_tenant_commands(commands, command)
    admin.add_user_commands(commands, command)
    ops.add_ops_commands(commands, command)
    incidents.add_incident_commands(commands, command)
    bans.add_bans_commands(commands, command)
    receipts.add_receipt_commands(commands, command)
    report.add_report_command(commands, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # everything sluis creates is private to its user
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["send"]:
        from . import send  # paramiko and rich only for the client
        return send.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    # One escaped line per record for every logger (asyncssh's too): see server/logsafe.py.
    logging.basicConfig(level=logging.INFO, handlers=[logsafe.stream_handler(
        sys.stderr, "%(asctime)s %(levelname)s %(name)s: %(message)s")])
    standalone = args.func is receipts.cmd_verify and args.allowed_signers is not None
    if args.func is not ops.cmd_init and not standalone:
        try:
            args.settings = load_settings(default_config_path(args.config, os.environ))
        except ConfigError as exc:
            print(f"sluis: configuration error: {exc}", file=sys.stderr)
            return 2
        logging.getLogger().setLevel(args.settings.log.level.upper())
        if args.settings.log.level != "debug":
            # sluis logs each request itself; the twilio client would log every API call
            for noisy in ("asyncssh", "twilio"):
                logging.getLogger(noisy).setLevel(logging.WARNING)
        if args.func is not ops.cmd_serve:
            logging.getLogger("sluis.audit").setLevel(logging.WARNING)  # the CLI prints its own result
    try:
        return args.func(args) or 0
    except (SluisError, ConfigError, KeyFileError, ReceiptKeyError, FileExistsError, FileNotFoundError,
            DatabaseUnavailable, MigrationFailed) as exc:
        print(f"sluis: {exc}", file=sys.stderr)
        if isinstance(exc, SluisError) and hasattr(args, "settings"):
            _audit_refusal(args, exc)
        return 1
    except KeyboardInterrupt:
        return 130


def _audit_refusal(args: argparse.Namespace, exc: Exception) -> None:
    """A refused administrative command leaves an audit record too: the command and the name it
    was about, never its other arguments (they may hold a phone number or a password)."""
    from ..app import build_app
    from .common import operator

    words = [args.command] + [getattr(args, f"{group}_command") for group in SUBCOMMAND_GROUPS
                              if getattr(args, f"{group}_command", None)]
    if isinstance(getattr(args, "name", None), str):
        words.append(args.name)
    try:
        app = build_app(args.settings)
    except Exception:  # no usable database: the message above is all we can give
        return
    try:
        actor = operator()
        app.audit.record("cli.refused", actor=actor.name, source=actor.source, command=" ".join(words),
                         error=str(exc)[:300])
    finally:
        app.close()


if __name__ == "__main__":
    sys.exit(main())

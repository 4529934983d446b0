"""Helpers the CLI commands share: opening the app, the operator's name, printing tables."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterable, Sequence

from ..app import App, build_app
from ..core.directory import Actor


def open_app(args: Any) -> App:
    return build_app(args.settings)


def operator() -> Actor:
    """The person running the CLI, as recorded in the audit log."""
    name = os.environ.get("SUDO_USER") or os.environ.get("USER") or os.environ.get("LOGNAME")
    if not name:
        try:
            import pwd

            name = pwd.getpwuid(os.getuid()).pw_name
        except (ImportError, KeyError):
            name = "unknown"
    return Actor(name=f"admin:{name}", source="cli")


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False, default=str)
    print()


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())

"""Helpers the CLI commands share: opening the app, the operator's name, printing tables."""

from __future__ import annotations

import json
import os
import pwd
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..app import App, build_app
from ..core.directory import Actor


def open_app(args: Any) -> App:
    return build_app(args.settings)


LOGINUID = Path("/proc/self/loginuid")
UNSET_LOGINUID = 4294967295  # (uid_t) -1: no login session (a daemon, or a container without audit)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def _login_user(loginuid: Path) -> str | None:
    """The user who logged in to start this session: the kernel keeps it across su, sudo and runuser."""
    try:
        uid = int(loginuid.read_text().strip())
    except (OSError, ValueError):
        return None
    return None if uid == UNSET_LOGINUID else _user_name(uid)


def operator(environ: Mapping[str, str] | None = None, loginuid: Path = LOGINUID) -> Actor:
    """The person running the CLI, as recorded in the audit log: `admin:<person>`, and the
    effective user the command ran as in the source (`cli:<user>`).

    The person is $SUDO_USER, else the kernel's login uid, else the login name: under
    `runuser -u sluis` the environment says "sluis", the login uid still names who logged in.
    """
    env = os.environ if environ is None else environ
    effective = _user_name(os.geteuid())
    name = env.get("SUDO_USER") or _login_user(loginuid) or env.get("LOGNAME") or env.get("USER") or effective
    return Actor(name=f"admin:{name}", source=f"cli:{effective}")


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False, default=str)
    print()


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())

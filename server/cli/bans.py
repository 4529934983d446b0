"""`sluis bans list|lift`: the defender's bans (docs/defender.md). A lift is audited and takes
effect in a running server within a few seconds (serve reloads the bans)."""

from __future__ import annotations

from typing import Any

from ..core.bans import BanStore
from ..core.clock import SystemClock, iso
from ..core.defender import source_key
from ..errors import NotFound
from .common import open_app, operator, print_json, print_table


def add_bans_commands(commands: Any, command: Any) -> None:
    bans = commands.add_parser("bans", help="addresses the defender refuses").add_subparsers(
        dest="bans_command", required=True, metavar="ACTION")
    listing = command(bans, "list", cmd_bans_list, "list bans in force (and, with --all, remembered ones)",
                      "List the sources (IPv4 addresses, IPv6 /64s) banned for failed logins or protocol "
                      "abuse, until when, their score and its reasons, and how many times each was banned.")
    listing.add_argument("--all", action="store_true", help="include ended bans still remembered for repeats")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    lift = command(bans, "lift", cmd_bans_lift, "end a ban now (audited)",
                   "End the ban on ADDRESS (an IPv6 address lifts its /64). Its count of bans is kept, so "
                   "a new ban lasts longer.")
    lift.add_argument("address", metavar="ADDRESS")


def cmd_bans_list(args: Any) -> None:
    app = open_app(args)
    now = SystemClock().now()
    bans = [b for b in BanStore(app.db, app.audit).known(now, 100_000) if args.all or b.until > now]
    if args.json:
        print_json([b.as_dict() for b in bans])
        return
    print_table(["address", "until", "bans", "score", "reasons"],
                [[b.address, iso(b.until) + ("" if b.until > now else " (ended)"), b.offences, b.score,
                  ", ".join(f"{k} {v}" for k, v in sorted(b.reasons.items()))] for b in bans])


def cmd_bans_lift(args: Any) -> None:
    app = open_app(args)
    address = source_key(args.address)
    who = operator()
    if not BanStore(app.db, app.audit).lift(address, SystemClock().now(), actor=who.name, source=who.source):
        raise NotFound(f"no ban in force on {address}")
    print(f"lifted the ban on {address}")

"""`sluis incidents [--json] [--all]` and `sluis incidents ack ID --note TEXT`: security incidents
and their 24-hour notification deadline (protocol art. 6); see docs/incidents.md."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ...retention.alerts import quote
from ..core.incidents import OPEN
from .common import open_app, operator, print_json, print_table


def add_incident_commands(commands: Any, command: Any) -> None:
    incidents = command(commands, "incidents", cmd_incidents, "security incidents and their 24 h deadline",
                        "List open incidents (with --all also reported ones): kind, source, account, tenant and "
                        "its DPO, count, first and last seen, the notification deadline (detection + 24 h, "
                        "protocol art. 6) and the time left. 'sluis incidents ack ID --note TEXT' records the report.")
    incidents.add_argument("--json", action="store_true", help="machine-readable output")
    incidents.add_argument("--all", action="store_true", help="include reported incidents")
    actions = incidents.add_subparsers(dest="incidents_command", required=False, metavar="ACTION")
    ack = command(actions, "ack", cmd_incidents_ack, "record that an incident was reported",
                  "Record that incident ID was reported (open -> reported), with a note saying to whom and how. "
                  "Audited as incident.ack with the operating-system user who ran it.")
    ack.add_argument("id", type=int, metavar="ID")
    ack.add_argument("--note", required=True, metavar="TEXT", help="to whom and how it was reported")


def _safe(text: str | None) -> str:
    """A client-chosen name (a tried user name) as it may go to a terminal."""
    if not text:
        return "-"
    return text if text.isprintable() and " " not in text else quote(text)


def _left(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    return f"{sign}{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def cmd_incidents(args: Any) -> int:
    app = open_app(args)
    now = app.clock.now()
    incidents = app.incidents.listing(include_reported=args.all)
    if args.json:
        print_json([i.as_dict(now) for i in incidents])
        return 0
    if not incidents:
        print("no open incidents" if not args.all else "no incidents")
        return 0
    print_table(["ID", "STATE", "KIND", "SOURCE", "ACCOUNT", "TENANT", "COUNT", "FIRST SEEN", "LAST SEEN",
                 "DEADLINE", "LEFT", "DPO"],
                [(i.id, i.state, i.kind, i.source or "-", _safe(i.account), i.tenant or "-", i.count,
                  i.first_seen[:19], i.last_seen[:19], i.deadline[:16],
                  _left(i.time_left(now)) if i.state == OPEN else f"reported {(i.ack_at or '?')[:16]}",
                  " ".join(p for p in (i.dpo_name, i.dpo_email, i.dpo_phone) if p) or "-")
                 for i in incidents])
    for i in incidents:
        print(f"#{i.id}: {i.what}" + (f"  [reported by {i.ack_by}: {i.ack_note}]" if i.ack_note else ""))
    return 0


def cmd_incidents_ack(args: Any) -> None:
    app = open_app(args)
    actor = operator()
    incident = app.incidents.ack(args.id, args.note, actor=actor.name, source=actor.source)
    late = " (after the deadline)" if incident.ack_at and incident.ack_at > incident.deadline else ""
    print(f"incident #{incident.id} recorded as reported{late}")

"""`sluis report`: the evidence report for a DPO or an auditor (server/core/evidence.py)."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..core.evidence import build_report, parse_period
from ..errors import InvalidInput
from .common import open_app, operator


def add_report_command(commands: Any, command: Any) -> None:
    report = command(commands, "report", cmd_report, "evidence report for a DPO or an auditor (HTML or JSON)",
                     "The protocol register entry, accounts with their function and last login, each "
                     "delivery's life (published, SMS per phone, collected by whom, removed, key destroyed), "
                     "refused uploads, denied attempts, incidents, and the audit chain's state and head hash. "
                     "HTML is one self-contained, printable file; JSON lists the same audit records as "
                     "`sluis audit export --json`.")
    report.add_argument("--tenant", metavar="T", help="one municipality (default: all)")
    report.add_argument("--from", dest="start", metavar="DATE", help="from this date (YYYY-MM-DD, inclusive)")
    report.add_argument("--to", dest="end", metavar="DATE", help="up to this date (YYYY-MM-DD, inclusive)")
    report.add_argument("--format", choices=("html", "json"), default="html")
    report.add_argument("--out", type=Path, metavar="FILE", help="write here instead of standard output")


def _date(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    except ValueError:
        raise InvalidInput(f"{flag} {text!r}: expected YYYY-MM-DD") from None


def cmd_report(args: Any) -> None:
    app = open_app(args)
    start = _date(args.start, "--from")
    end = _date(args.end, "--to")
    if end is not None:
        end += timedelta(days=1)       # --to is inclusive
    if start and end and end <= start:
        raise InvalidInput("--to lies before --from")
    if args.tenant:
        app.directory.tenant(args.tenant)   # NotFound names the tenant
    actor = operator()
    report = build_report(app.evidence, app.audit, app.clock, tenant=args.tenant,
                          period=parse_period(start, end), generated_by=actor.name)
    if args.format == "json":
        text = json.dumps(report, ensure_ascii=False, sort_keys=True, indent=1) + "\n"
    else:
        # Imported here: the renderer and html.entities are 0.5 MiB a running server never needs.
        from ..formats.report_html import render_html
        text = render_html(report)
    app.audit.record("report.generate", actor=actor.name, source=actor.source, tenant=args.tenant,
                     format=args.format, start=args.start, end=args.end,
                     chain_ok=report["audit_chain"]["ok"], head_seq=report["audit_chain"]["head_seq"])
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)

"""`sluis init|serve|status|audit|janitor|key|delivery`: running and inspecting the service."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timezone
from typing import Any

from ..core.auditkey import PublicKey
from ..core.checkpoints import MANUAL, check_checkpoints
from ..core.clock import iso
from ..core import deliveries
from ..errors import InvalidInput, NotFound
from .. import memory
from ..hardening import forbid_core_dumps
from ..service import Service, event_loop_factory
from ..sftp import fastpath
from .common import open_app, operator, print_json, print_table
from .init import init_setup


def cmd_init(args: Any) -> None:
    config = init_setup(args.dir, {"database": {"url": args.database}} if args.database else None)
    print(f"created {config}")
    print(f"next: sluis -c {config} tenant add NAME --phone +32...; sluis -c {config} serve")


def cmd_serve(args: Any) -> None:
    forbid_core_dumps()  # before any key or upload is in memory
    memory.limit_arenas()  # before any thread starts (server/memory.py)
    app = open_app(args)
    try:
        # the transport fast path (server/sftp/fastpath.py), this process only
        fastpath.install(fastpath.PARTS if app.settings.limits.send_half_window else fastpath.PARTS - {"half-window"})
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(Service(app).run())
    finally:
        app.close()


def add_ops_commands(commands: Any, command: Any) -> None:
    status = command(commands, "status", cmd_status, "deliveries, their state and their key messages",
                     "Show every delivery not yet removed (and, with --all, removed ones), its state, and "
                     "the state of each key message per phone; then where each tenant stands.")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--all", action="store_true", help="include removed deliveries")
    audit = commands.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="audit_command", required=True, metavar="ACTION")
    verify = command(audit, "verify", cmd_audit_verify, "check the audit chain and its signed checkpoints",
                     "Recompute every record's keyed hash and link, check the signature of every checkpoint "
                     "in [audit] checkpoint_file (and --checkpoint), and that the chain still holds each one. "
                     "Exits 1 naming the first bad record, a bad checkpoint, or the records lost since a "
                     "checkpoint (truncation and an emptied log included).")
    verify.add_argument("--checkpoint", action="append", default=[], metavar="LINE",
                        help="also verify against this checkpoint line (from a mail or the journal)")
    verify.add_argument("--public-key", metavar="KEY",
                        help="check signatures with this key (ed25519:...) instead of the local audit key's")
    verify.add_argument("--no-file", action="store_true", help="ignore the checkpoint file")
    command(audit, "checkpoint", cmd_audit_checkpoint, "verify the newest records and sign a checkpoint now",
            "Verify the records since the last checkpoint, then sign the head and append it to the "
            "checkpoint file and the journal. Exits 1 (and records audit.broken) if the chain is broken.")
    command(audit, "public-key", cmd_audit_public_key, "print the key auditors verify checkpoints with",
            "Print the Ed25519 public key (derived from the audit key) that signs checkpoints. Keep it "
            "apart from the server: with it, a checkpoint from a mail or the journal can be verified.")
    export = command(audit, "export", cmd_audit_export, "print audit records")
    export.add_argument("--since", metavar="DATE", help="only records from this date (YYYY-MM-DD) on")
    export.add_argument("--tenant", metavar="T", help="only records about this tenant")
    export.add_argument("--json", action="store_true", help="JSON lines, one record each")
    janitor = commands.add_parser("janitor", help="retention").add_subparsers(
        dest="janitor_command", required=True, metavar="ACTION")
    command(janitor, "run", cmd_janitor_run, "one retention pass: remove collected and expired files",
            "Remove collected deliveries past [retention] collected_grace, expire uncollected ones past "
            "expire_after, destroy key material, sweep orphans, prune old audit records; report it.")
    key = commands.add_parser("key", help="key delivery").add_subparsers(
        dest="key_command", required=True, metavar="ACTION")
    resend = command(key, "resend", cmd_key_resend, "send a delivery's passphrase again by SMS",
                     "Queue the passphrase again for every registered phone of the tenant (or one). "
                     "Audited; at most once per [sms] resend_interval; impossible once the key is destroyed.")
    resend.add_argument("delivery", metavar="DELIVERY")
    resend.add_argument("--phone", metavar="E164")
    delivery = commands.add_parser("delivery", help="the yearly limit; removing a delivery").add_subparsers(
        dest="delivery_command", required=True, metavar="ACTION")
    allow = command(delivery, "allow", cmd_delivery_allow, "grant a tenant one delivery beyond the yearly limit")
    allow.add_argument("tenant", metavar="TENANT")
    allow.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in the audit log)")
    remove = command(delivery, "remove", cmd_delivery_remove, "remove a delivery now, as the operator",
                     "Remove a waiting or collected delivery before its time: a list sent to the wrong "
                     "municipality that its sender can no longer withdraw, or on the DPO's order. The file is "
                     "deleted, key messages not yet sent are cancelled and the key is destroyed, a download in "
                     "progress reads no more, and delivery.remove is audited with reason admin, the operator "
                     "and --reason; a delivery nobody collected gets its receipt (outcome admin). A running "
                     "server needs no restart. Exits 1 for an unknown or already removed delivery.")
    remove.add_argument("delivery", metavar="DELIVERY", help="the delivery's id (`sluis status`)")
    remove.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in the audit log)")


def cmd_status(args: Any) -> None:
    app = open_app(args)
    found = deliveries.listing(app.db, include_removed=args.all)
    tenants = {t.id: t for t in app.directory.tenants()}
    users = {u.id: u.name for u in app.directory.users()}
    rows: list[dict[str, Any]] = []   # JSON-shaped: printed as is with --json
    for d in found:
        jobs = [j for j in app.outbox.jobs(d.id)]
        rows.append({"id": d.id, "tenant": tenants[d.tenant_id].name, "file": d.stored_name,
                     "sender": users.get(d.sender_id), "state": d.state, "size": d.stored_size,
                     "published": d.created_at, "expires": d.expires_at, "collected": d.collected_at,
                     "collected_by": d.collected_by, "removed": d.removed_reason,
                     "messages": [{"kind": j.kind, "to": j.target, "state": j.state,
                                   "provider_status": j.provider_status, "attempts": j.attempts,
                                   "error": j.last_error} for j in jobs]})
    today = app.clock.now().date()
    standing = []
    for tenant in tenants.values():
        protocol = app.protocols.get(tenant)
        standing.append({"tenant": tenant.name, "active": tenant.active,
                         "protocol": protocol.describe(today) if protocol else "none registered",
                         "delivery": app.policy.standing(app.db, tenant)})
    nodes = [{"node": n.name, "live": n.live, "uploads": n.uploads, "lease_until": n.lease_until,
              "started": n.started_at, "process": n.holder} for n in app.nodes.states()]
    if args.json:
        print_json({"deliveries": rows, "tenants": standing, "nodes": nodes})
        return
    if not rows:
        print("no deliveries")
    for row in rows:
        print(f"{row['id']}  {row['tenant']}/{row['file']}  {row['state']}"
              + (f" ({row['removed']})" if row["removed"] else "")
              + f"  {row['size']} bytes  published {row['published'][:16]}  expires {row['expires'][:10]}"
              + (f"  collected by {row['collected_by']} {row['collected'][:16]}" if row["collected"] else ""))
        for m in row["messages"]:
            detail = f" [{m['provider_status']}]" if m["provider_status"] else ""
            error = f" error: {m['error']}" if m["error"] else ""
            print(f"    {m['kind']:5} {m['to']:16} {m['state']}{detail} attempts={m['attempts']}{error}")
    print()
    print_table(["TENANT", "ACTIVE", "PROTOCOL", "DELIVERY"],
                [(s["tenant"], "yes" if s["active"] else "no", s["protocol"], s["delivery"]) for s in standing])
    if nodes:   # `sluis serve` processes (several nodes: server/core/nodes.py)
        print()
        print_table(["NODE", "STATE", "UPLOADS", "LEASE UNTIL", "PROCESS"],
                    [(n["node"], "live" if n["live"] else "gone (lease passed)", str(n["uploads"]),
                      str(n["lease_until"])[:19], n["process"]) for n in nodes])


def cmd_audit_verify(args: Any) -> int:
    app = open_app(args)
    public = app.checkpoints.public
    if args.public_key:
        try:
            public = PublicKey.parse(args.public_key)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    result = app.audit.verify()
    seq, head = app.audit.head()
    lines = [] if args.no_file else app.checkpoints.lines()
    lines += [(f"--checkpoint {n}", line) for n, line in enumerate(args.checkpoint, 1)]
    check = check_checkpoints(app.audit, lines, public)
    if result.ok:
        print(f"audit log intact: {result.checked} records, head #{seq} {head}")
        print(f"checked {result.keyed} records keyed (HMAC-SHA256) and {result.unkeyed} unkeyed "
              "(plain SHA-256, from before the audit key)")
    else:
        print(f"audit log BROKEN at record #{result.bad_seq}: {result.reason} "
              f"({result.checked} records before it are intact)")
    for problem in check.problems:
        print(f"checkpoint FAILED: {problem}")
    if check.basis is not None:
        where, basis = check.basis
        print(f"verified from checkpoint #{basis.seq} of {basis.time} ({where}); {check.count} "
              f"checkpoints signed by {public.key_id}")
    else:
        print("no checkpoint to verify against: the loss of the newest records could not be detected")
    # A broken or truncated chain is an incident whoever finds it (signature problems of lines
    # given by hand are not: a mistyped --checkpoint proves nothing about the chain).
    findings = ([] if result.ok else [(result.bad_seq or 0, result.reason)]) + check.losses
    actor = operator()
    for bad_seq, reason in findings:
        app.checkpoints.report_broken(bad_seq, reason, actor=actor.name, source=actor.source)
    return 0 if result.ok and not check.problems else 1


def cmd_audit_checkpoint(args: Any) -> int:
    app = open_app(args)
    checkpoint = app.checkpoints.checkpoint(MANUAL)
    if checkpoint is None:
        print("audit chain broken: no checkpoint signed (recorded as audit.broken); run sluis audit verify")
        return 1
    print(checkpoint.line)
    return 0


def cmd_audit_public_key(args: Any) -> None:
    app = open_app(args)
    public = app.checkpoints.public
    print(public.text)
    print(f"key id {public.key_id}", file=sys.stderr)


def cmd_audit_export(args: Any) -> None:
    app = open_app(args)
    since = None
    if args.since:
        try:
            since = iso(datetime.fromisoformat(args.since).replace(tzinfo=timezone.utc))
        except ValueError:
            raise InvalidInput(f"--since {args.since!r}: expected YYYY-MM-DD") from None
    for record in app.audit.records(since=since, tenant=args.tenant):
        if args.json:
            import json

            print(json.dumps(record.as_dict(), ensure_ascii=False, sort_keys=True))
        else:
            print(f"#{record.seq} {record.ts} {record.event} actor={record.actor} tenant={record.tenant or '-'}"
                  f" delivery={record.delivery or '-'} source={record.source or '-'} {record.detail}")


def cmd_janitor_run(args: Any) -> None:
    app = open_app(args)
    report = app.janitor.run_once()
    actor = operator()
    app.audit.record("janitor.run", actor=actor.name, source=actor.source, removed=len(report.removed_collected),
                     expired=len(report.expired), interrupted=report.interrupted, orphans=report.orphans,
                     keys_destroyed=report.keys_destroyed,
                     audit_pruned=report.audit_pruned, skipped=report.skipped)
    print(report.summary())
    for delivery_id in report.removed_collected:
        print(f"removed (collected): {delivery_id}")
    for delivery_id in report.expired:
        print(f"expired: {delivery_id}")


def cmd_key_resend(args: Any) -> None:
    app = open_app(args)
    actor = operator()
    phones = app.outbox.resend(args.delivery, actor=actor.name, phone=args.phone, source=actor.source)
    print(f"queued the key of {args.delivery} for {', '.join(phones)}; the running server sends it")


def cmd_delivery_remove(args: Any) -> None:
    app = open_app(args)
    found = deliveries.by_id(app.db, args.delivery)
    if found is None:
        raise NotFound(f"no delivery {args.delivery!r} (`sluis status --all` lists them)")
    if found.state == deliveries.REMOVED:
        raise InvalidInput(f"delivery {found.id} is already removed ({found.removed_reason})")
    actor = operator()
    if not app.dropbox.remove(found, deliveries.REASON_ADMIN, actor=actor.name, source=actor.source,
                              why=args.reason):
        raise InvalidInput(f"delivery {found.id} was removed meanwhile")
    tenant = app.directory.tenant_name(found.tenant_id)
    print(f"removed {tenant}/{found.stored_name} ({found.id}); key destroyed, unsent key messages cancelled")


def cmd_delivery_allow(args: Any) -> None:
    app = open_app(args)
    tenant = app.directory.tenant(args.tenant)
    app.protocols.allow(operator(), tenant, args.reason)
    print(f"{tenant.name} may receive one more delivery within the coming 365 days")

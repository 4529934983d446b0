"""The evidence report's data (for a DPO or an auditor, protocol art. 6 and 9): the register
entry, accounts, each delivery's life, refused uploads, denied attempts, incidents and the audit
chain's state, read from the state store. Read-only; rendering is server/formats/report_html.py.

Every event listed is an audit record exactly as `sluis audit export --json` prints it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .audit import AuditLog
from .clock import Clock, iso
from .directory import tenant_phones
from .records import ROLE_RECIPIENT
from .store import Store

REPORT_VERSION = 1
REFUSED_UPLOADS = ("upload.abort", "upload.refuse", "upload.reject")   # any upload that was not published
DENIED = ("auth.failure", "sftp.deny", "cli.refused")
UPLOAD_OPS = ("open_write", "write", "rename")    # an sftp.deny of these is a refused upload (e.g. the policy)
LIFE_EVENTS = ("delivery.publish", "key.sms.sent", "key.sms.delivered", "key.sms.undelivered", "key.failed",
               "key.resend", "download.open", "download.close", "delivery.collect", "delivery.remove",
               "key.destroy", "receipt.issue")


@dataclass(frozen=True)
class Period:
    start: str | None   # ISO timestamp, inclusive
    end: str | None     # ISO timestamp, exclusive

    def holds(self, ts: str) -> bool:
        return (self.start is None or ts >= self.start) and (self.end is None or ts < self.end)


class EvidenceStore:
    """Repository: the queries the report needs, and nothing that writes."""

    def __init__(self, db: Store) -> None:
        self.db = db

    def tenants(self, name: str | None) -> list[dict[str, Any]]:
        where, params = ("WHERE name = ?", (name,)) if name else ("", ())
        return [dict(r) for r in self.db.query(f"SELECT * FROM tenants {where} ORDER BY name", params)]

    def phones(self, tenant_id: int) -> list[str]:
        return tenant_phones(self.db, tenant_id)

    def protocol(self, tenant_id: int) -> dict[str, Any] | None:
        row = self.db.query_one("SELECT signed, effective, reference, notice, ends FROM protocols"
                                " WHERE tenant_id = ?", (tenant_id,))
        return dict(row) if row else None

    def accounts(self, tenant_id: int, sender_ids: set[int]) -> list[dict[str, Any]]:
        """The tenant's recipients and the senders who delivered to it, with their last login."""
        marks = ",".join("?" * len(sender_ids)) or "NULL"
        rows = self.db.query(
            "SELECT u.name, u.role, u.function, u.active, u.email, u.created_at,"
            " (SELECT MAX(ts) FROM audit a WHERE a.event = 'auth.success' AND a.actor = u.name) AS last_login"
            f" FROM users u WHERE u.tenant_id = ? OR u.id IN ({marks}) ORDER BY u.role, u.name",
            (tenant_id, *sorted(sender_ids)))
        return [{**dict(r), "active": bool(r["active"])} for r in rows]

    def deliveries(self, tenant_id: int, period: Period) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT d.*, u.name AS sender FROM deliveries d JOIN users u ON u.id = d.sender_id"
                             " WHERE d.tenant_id = ? AND (CAST(? AS TEXT) IS NULL OR d.created_at >= ?)"
                             " AND (CAST(? AS TEXT) IS NULL OR d.created_at < ?) ORDER BY d.created_at",
                             (tenant_id, period.start, period.start, period.end, period.end))
        return [dict(r) for r in rows]

    def messages(self, delivery_id: str) -> list[dict[str, Any]]:
        """Key messages per phone (and e-mail notices) with their last known status."""
        rows = self.db.query("SELECT kind, target, state, provider_status, attempts, last_error, created_at,"
                             " updated_at FROM outbox WHERE delivery_id = ? AND kind IN ('sms', 'email')"
                             " ORDER BY id", (delivery_id,))
        return [dict(r) for r in rows]

    def receipt(self, delivery_id: str) -> dict[str, Any] | None:
        row = self.db.query_one("SELECT outcome, issued_at, body FROM receipts WHERE delivery_id = ?",
                                (delivery_id,))
        return dict(row) if row else None

    def incidents(self, tenant: str, accounts: list[str], period: Period) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(accounts)) or "NULL"
        rows = self.db.query(f"SELECT * FROM incidents WHERE (tenant = ? OR account IN ({marks}))"
                             " AND (CAST(? AS TEXT) IS NULL OR last_seen >= ?) AND (CAST(? AS TEXT) IS NULL OR first_seen < ?) ORDER BY id",
                             (tenant, *accounts, period.start, period.start, period.end, period.end))
        return [dict(r) for r in rows]


def build_report(store: EvidenceStore, audit: AuditLog, clock: Clock, *, tenant: str | None,
                 period: Period, generated_by: str) -> dict[str, Any]:
    """The whole report as plain data (what `--format json` prints and the HTML shows)."""
    verification = audit.verify()
    head_seq, head_hash = audit.head()
    scopes = [_Scope(store, row, period) for row in store.tenants(tenant)]
    # One streaming pass from the period's start: memory grows with what the report shows,
    # not with the size of the log. A delivery's life may run past the period's end.
    for record in audit.records(since=period.start):
        if record.seq > head_seq:
            break
        as_dict = record.as_dict()
        for scope in scopes:
            scope.take(as_dict)
    tenants = [scope.section() for scope in scopes]
    return {
        "report": "sluis-evidence", "version": REPORT_VERSION, "generated_at": iso(clock.now()),
        "generated_by": generated_by, "tenant": tenant,
        "period": {"from": period.start, "to": period.end},
        "audit_chain": {"ok": verification.ok, "checked": verification.checked, "bad_seq": verification.bad_seq,
                        "reason": verification.reason, "head_seq": head_seq, "head_hash": head_hash},
        "tenants": tenants,
    }


class _Scope:
    """One tenant's part of the report, filled record by record."""

    def __init__(self, store: EvidenceStore, row: dict[str, Any], period: Period) -> None:
        self.store, self.row, self.period = store, row, period
        self.deliveries = store.deliveries(row["id"], period)
        self.accounts = store.accounts(row["id"], {d["sender_id"] for d in self.deliveries})
        self.names = [a["name"] for a in self.accounts if a["role"] == ROLE_RECIPIENT]
        self.by_delivery: dict[str, list[dict[str, Any]]] = {d["id"]: [] for d in self.deliveries}
        self.events: list[dict[str, Any]] = []

    def take(self, r: dict[str, Any]) -> None:
        life = self.by_delivery.get(r["delivery"]) if r["delivery"] else None
        if life is not None and r["event"] in LIFE_EVENTS:
            life.append(r)
        if self.period.holds(r["ts"]) and (
                r["tenant"] == self.row["name"] or life is not None or _sender_into(r, self.row["name"])
                or (r["event"] in DENIED and r["tenant"] is None and r["actor"] in self.names)):
            self.events.append(r)

    def section(self) -> dict[str, Any]:
        row, store = self.row, self.store
        return {
            "name": row["name"], "nis": row["nis"], "active": bool(row["active"]), "email": row["email"],
            "dpo": {"name": row["dpo_name"], "email": row["dpo_email"], "phone": row["dpo_phone"]},
            "phones": store.phones(row["id"]),
            "protocol": store.protocol(row["id"]),
            "accounts": self.accounts,
            "deliveries": [_life(store, d, self.by_delivery[d["id"]]) for d in self.deliveries],
            "refused_uploads": [e for e in self.events if _refused_upload(e)],
            "denied": [e for e in self.events if e["event"] in DENIED and not _refused_upload(e)],
            "incidents": store.incidents(row["name"], self.names, self.period),
            "events": self.events,
        }


def _sender_into(record: dict[str, Any], tenant: str) -> bool:
    """A sender's denied request names the tenant only in its path (/genk/...)."""
    path = str(record["detail"].get("path", "")) if record["event"] == "sftp.deny" else ""
    return record["tenant"] is None and path.split("/")[1:2] == [tenant]


def _refused_upload(record: dict[str, Any]) -> bool:
    return record["event"] in REFUSED_UPLOADS or (
        record["event"] == "sftp.deny" and record["detail"].get("op") in UPLOAD_OPS)


def _first(records: list[dict[str, Any]], event: str) -> dict[str, Any] | None:
    return next((r for r in records if r["event"] == event), None)


def _life(store: EvidenceStore, d: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    destroyed = _first(records, "key.destroy")
    receipt = store.receipt(d["id"])
    return {
        "id": d["id"], "name": d["name"], "stored_name": d["stored_name"], "sender": d["sender"],
        "state": d["state"], "plain_size": d["plain_size"], "plain_sha256": d["plain_sha256"],
        "stored_size": d["stored_size"], "stored_sha256": d["stored_sha256"],
        "published_at": d["created_at"], "expires_at": d["expires_at"],
        "messages": store.messages(d["id"]),
        "collected_at": d["collected_at"], "collected_by": d["collected_by"], "collected_from": d["collected_from"],
        "removed_at": d["removed_at"], "removed_reason": d["removed_reason"],
        "key_destroyed_at": destroyed["ts"] if destroyed else None,
        "receipt": {"outcome": receipt["outcome"], "issued_at": receipt["issued_at"],
                    "audit_hash": json.loads(receipt["body"])["audit_hash"]} if receipt else None,
        "events": [r["seq"] for r in records],
    }


def parse_period(start: datetime | None, end: datetime | None) -> Period:
    return Period(iso(start) if start else None, iso(end) if end else None)

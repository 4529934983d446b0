"""The data-sharing protocol register and the yearly-limit exceptions (tables `protocols` and
`allowances`): registration, notice and grants are admin changes, each one transaction with its
audit record. The rules that read them are in retention/policy.py (docs/policy.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from ..errors import InvalidInput, NotFound
from .audit import AuditLog
from .clock import Clock, iso
from .directory import Actor
from .records import Tenant
from .store import Reader, Store


def notice_end(notice: date) -> date:
    """A protocol ends twelve months after notice is given (art. 12)."""
    try:
        return notice.replace(year=notice.year + 1)
    except ValueError:  # 29 February
        return notice.replace(year=notice.year + 1, day=28)


@dataclass(frozen=True)
class Protocol:
    signed: date
    effective: date
    reference: str
    notice: date | None
    ends: date | None

    def in_force(self, today: date) -> bool:
        return self.effective <= today and (self.ends is None or today < self.ends)

    def describe(self, today: date) -> str:
        if today < self.effective:
            return f"signed {self.signed}, in force from {self.effective}"
        if self.ends and today >= self.ends:
            return f"ended on {self.ends} (notice given {self.notice})"
        if self.ends:
            return f"in force since {self.effective}; notice given {self.notice}, ends {self.ends}"
        return f"in force since {self.effective}"


def _date(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


def load_protocol(conn: Reader, tenant_id: int) -> Protocol | None:
    """The tenant's protocol, read in `conn` (a Store, or the publishing transaction)."""
    row = conn.execute("SELECT signed, effective, reference, notice, ends FROM protocols WHERE tenant_id = ?",
                       (tenant_id,)).fetchone()
    if row is None:
        return None
    signed, effective = _date(row["signed"]), _date(row["effective"])
    assert signed is not None and effective is not None  # NOT NULL columns
    return Protocol(signed=signed, effective=effective, reference=row["reference"],
                    notice=_date(row["notice"]), ends=_date(row["ends"]))


def open_allowance(conn: Reader, tenant_id: int, since: str) -> int | None:
    """The oldest unused exception granted since `since`, by id."""
    row = conn.execute("SELECT id FROM allowances WHERE tenant_id = ? AND used_by IS NULL"
                       " AND granted_at >= ? ORDER BY id LIMIT 1", (tenant_id, since)).fetchone()
    return int(row[0]) if row else None


def use_allowance(tx: Reader, allowance_id: int, delivery_id: str) -> None:
    """Spend an exception on the delivery being published: `tx` is the publishing transaction
    (the policy's admit runs read-only on a Store when no delivery is given)."""
    tx.execute("UPDATE allowances SET used_by = ? WHERE id = ?", (delivery_id, allowance_id))


class ProtocolRegister:
    """Registers protocols, their termination and yearly-limit exceptions; every change audited."""

    def __init__(self, db: Store, audit: AuditLog, clock: Clock) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock

    def get(self, tenant: Tenant) -> Protocol | None:
        return load_protocol(self.db, tenant.id)

    def register(self, actor: Actor, tenant: Tenant, *, signed: date, effective: date,
                 reference: str = "") -> None:
        """Register (or re-register, clearing a notice) the tenant's protocol."""
        if effective < signed:
            raise InvalidInput("--effective cannot be before --signed")
        with self.db.writer() as tx:
            tx.execute("INSERT INTO protocols (tenant_id, signed, effective, reference, notice, ends)"
                       " VALUES (?, ?, ?, ?, NULL, NULL) ON CONFLICT (tenant_id) DO UPDATE SET"
                       " signed = excluded.signed, effective = excluded.effective,"
                       " reference = excluded.reference, notice = NULL, ends = NULL",
                       (tenant.id, signed.isoformat(), effective.isoformat(), reference))
            self.audit.append(tx, "protocol.register", actor=actor.name, tenant=tenant.name, source=actor.source,
                              signed=signed.isoformat(), effective=effective.isoformat(), reference=reference)

    def give_notice(self, actor: Actor, tenant: Tenant, notice: date) -> date:
        """Record notice of termination; returns the day the protocol ends."""
        ends = notice_end(notice)
        with self.db.writer() as tx:
            if load_protocol(tx, tenant.id) is None:
                raise NotFound(f"no protocol is registered for {tenant.name}")
            tx.execute("UPDATE protocols SET notice = ?, ends = ? WHERE tenant_id = ?",
                       (notice.isoformat(), ends.isoformat(), tenant.id))
            self.audit.append(tx, "protocol.notice", actor=actor.name, tenant=tenant.name, source=actor.source,
                              notice=notice.isoformat(), ends=ends.isoformat())
        return ends

    def allow(self, actor: Actor, tenant: Tenant, reason: str) -> None:
        """Grant the tenant one delivery beyond the yearly limit."""
        if not reason.strip():
            raise InvalidInput("--reason: say why the exception is granted (kept in the audit log)")
        with self.db.writer() as tx:
            tx.execute("INSERT INTO allowances (tenant_id, granted_at, granted_by, reason) VALUES (?, ?, ?, ?)",
                       (tenant.id, iso(self.clock.now()), actor.name, reason))
            self.audit.append(tx, "policy.allow", actor=actor.name, tenant=tenant.name, source=actor.source,
                              reason=reason)

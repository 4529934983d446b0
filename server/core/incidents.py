"""The incidents store: incidents, the tracker's cursor over the audit log, and the audit queries
the tracker needs. Protocol-neutral; the rules that open and update incidents live in
retention/incidents.py, the state machine is in docs/incidents.md.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, ContextManager

from ..errors import InvalidInput, NotFound
from .audit import AuditLog
from .clock import Clock, iso, parse_iso
from .store import Store, Tx

class IncidentState(enum.StrEnum):
    OPEN = "open"            # detected; the DPO/agency must be told within NOTIFY_WITHIN
    REPORTED = "reported"    # an operator acknowledged it as reported (ack note, who, when)


OPEN, REPORTED = IncidentState.OPEN, IncidentState.REPORTED
STATES = tuple(IncidentState)
NOTIFY_WITHIN = timedelta(hours=24)  # protocol art. 6: report within 24 hours of detection
NOTE_MAX = 2000


@dataclass(frozen=True)
class Incident:
    id: int
    kind: str             # the audit event that opened it (auth.failure, sftp.deny, ...)
    source: str | None    # client address, without the port
    account: str | None   # user name, or the name a client tried
    tenant: str | None
    first_seen: str
    last_seen: str
    count: int
    what: str
    state: IncidentState
    detected_at: str
    deadline: str         # detected_at + 24 h
    dpo_name: str | None
    dpo_email: str | None
    dpo_phone: str | None
    first_seq: int
    last_seq: int
    ack_note: str | None
    ack_by: str | None
    ack_at: str | None

    def time_left(self, now: datetime) -> timedelta:
        """Until the notification deadline (negative once it has passed)."""
        return parse_iso(self.deadline) - now

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {**asdict(self), "seconds_left": int(self.time_left(now).total_seconds())}


@dataclass(frozen=True)
class Entry:
    """An audit record as the tracker reads it."""

    seq: int
    ts: str
    event: str
    actor: str
    tenant: str | None
    source: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class Dpo:
    name: str | None
    email: str | None
    phone: str | None


class IncidentStore:
    """Reads and writes incidents; the tracker calls the `tx` methods inside one transaction per batch."""

    def __init__(self, db: Store, audit: AuditLog, clock: Clock) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock

    def exclusive(self) -> ContextManager[bool]:
        """Held by one tracker at a time across processes (True), else False at once: two
        trackers reading the same records would open every incident twice."""
        return self.db.try_lock("incidents")

    def writer(self) -> ContextManager[Tx]:
        """One write transaction: a tracker batch, its incidents and its cursor commit together."""
        return self.db.writer()

    # --- the cursor over the audit log ----------------------------------------------------------
    def cursor(self, tx: Tx, name: str) -> tuple[int, str | None]:
        row = tx.execute("SELECT seq, hash FROM cursors WHERE name = ?", (name,)).fetchone()
        return (row[0], row[1]) if row else (0, None)

    def set_cursor(self, tx: Tx, name: str, seq: int, digest: str | None) -> None:
        tx.execute("INSERT INTO cursors (name, seq, hash) VALUES (?, ?, ?) ON CONFLICT (name)"
                   " DO UPDATE SET seq = excluded.seq, hash = excluded.hash", (name, seq, digest))

    def head(self, tx: Tx) -> tuple[int, str | None]:
        row = tx.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, None)

    def hash_at(self, tx: Tx, seq: int) -> str | None:
        row = tx.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None

    def entries_after(self, tx: Tx, seq: int, limit: int) -> list[tuple[Entry, str]]:
        """The next records after `seq`, each with its hash (to move the cursor)."""
        rows = tx.execute("SELECT seq, ts, event, actor, tenant, source, detail, hash FROM audit WHERE seq > ?"
                          " ORDER BY seq LIMIT ?", (seq, limit)).fetchall()
        return [(Entry(seq=r["seq"], ts=r["ts"], event=r["event"], actor=r["actor"], tenant=r["tenant"],
                       source=r["source"], detail=_detail(r["detail"])), r["hash"]) for r in rows]

    def failures(self, tx: Tx, *, event: str, address: str | None, account: str | None, since: str,
                 through: int) -> tuple[int, int]:
        """How many `event` records since `since` (up to seq `through`) came from `address`, and
        how many named `account`."""
        by_address = tx.execute("SELECT COUNT(*) FROM audit WHERE event = ? AND ts >= ? AND seq <= ?"
                                " AND (source = ? OR source LIKE ?)",
                                (event, since, through, address, f"{address}:%")).fetchone()[0] if address else 0
        by_account = tx.execute("SELECT COUNT(*) FROM audit WHERE event = ? AND ts >= ? AND seq <= ? AND actor = ?",
                                (event, since, through, account)).fetchone()[0] if account else 0
        return by_address, by_account

    def dpo(self, tx: Tx, tenant: str | None) -> Dpo | None:
        if not tenant:
            return None
        row = tx.execute("SELECT dpo_name, dpo_email, dpo_phone FROM tenants WHERE name = ?", (tenant,)).fetchone()
        if row is None or not any(row):
            return None
        return Dpo(row[0], row[1], row[2])

    # --- incidents --------------------------------------------------------------------------------
    def find_open(self, tx: Tx, kind: str, address: str | None, account: str | None) -> Incident | None:
        """The open incident of this kind for the same address or the same account (for kinds
        with neither, the open incident of this kind)."""
        if address or account:
            row = tx.execute("SELECT * FROM incidents WHERE state = ? AND kind = ? AND"
                             " ((CAST(? AS TEXT) IS NOT NULL AND source = ?) OR (CAST(? AS TEXT) IS NOT NULL AND account = ?))"
                             " ORDER BY id LIMIT 1", (OPEN, kind, address, address, account, account)).fetchone()
        else:
            row = tx.execute("SELECT * FROM incidents WHERE state = ? AND kind = ? AND source IS NULL"
                             " AND account IS NULL ORDER BY id LIMIT 1", (OPEN, kind)).fetchone()
        return _incident(row) if row else None

    def open(self, tx: Tx, entry: Entry, *, address: str | None, account: str | None, count: int,
             what: str, dpo: Dpo | None) -> Incident:
        now = self.clock.now()
        cur = tx.execute(
            "INSERT INTO incidents (kind, source, account, tenant, first_seen, last_seen, count, what, state,"
            " detected_at, deadline, dpo_name, dpo_email, dpo_phone, first_seq, last_seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (entry.event, address, account, entry.tenant, entry.ts, entry.ts, count, what, OPEN, iso(now),
             iso(now + NOTIFY_WITHIN), dpo.name if dpo else None, dpo.email if dpo else None,
             dpo.phone if dpo else None, entry.seq, entry.seq))
        incident = self._get(tx, int(cur.fetchone()[0]))
        self.audit.append(tx, "incident.open", actor="sluis", tenant=entry.tenant, source=entry.source,
                          incident=incident.id, kind=incident.kind, account=account, count=count,
                          deadline=incident.deadline, record=entry.seq)
        return incident

    def touch(self, tx: Tx, incident: Incident, entry: Entry, dpo: Dpo | None) -> None:
        """A related event: count it, move last seen; name a tenant and DPO if none was named yet."""
        tx.execute("UPDATE incidents SET count = count + 1, last_seen = CASE WHEN last_seen > ? THEN last_seen"
                   " ELSE ? END, last_seq = ? WHERE id = ?", (entry.ts, entry.ts, entry.seq, incident.id))
        if incident.tenant is None and entry.tenant:
            tx.execute("UPDATE incidents SET tenant = ?, dpo_name = ?, dpo_email = ?, dpo_phone = ? WHERE id = ?",
                       (entry.tenant, dpo.name if dpo else None, dpo.email if dpo else None,
                        dpo.phone if dpo else None, incident.id))

    def _get(self, tx: Tx | Store, incident_id: int) -> Incident:
        row = tx.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        if row is None:
            raise NotFound(f"no incident #{incident_id}")
        return _incident(row)

    def get(self, incident_id: int) -> Incident:
        return self._get(self.db, incident_id)

    def listing(self, *, include_reported: bool = False) -> list[Incident]:
        if include_reported:
            return [_incident(r) for r in self.db.query("SELECT * FROM incidents ORDER BY id")]
        return [_incident(r) for r in self.db.query("SELECT * FROM incidents WHERE state = ? ORDER BY id", (OPEN,))]

    def ack(self, incident_id: int, note: str, *, actor: str, source: str) -> Incident:
        """Record that the incident was reported (open -> reported), with who did it and a note."""
        note = note.strip()
        if not note:
            raise InvalidInput("--note: say how and to whom the incident was reported")
        if len(note) > NOTE_MAX:
            raise InvalidInput(f"--note: at most {NOTE_MAX} characters")
        with self.db.writer() as tx:
            incident = self._get(tx, incident_id)
            if incident.state != OPEN:
                raise InvalidInput(f"incident #{incident_id} was reported already, on {incident.ack_at} "
                                   f"by {incident.ack_by}")
            now = iso(self.clock.now())
            tx.execute("UPDATE incidents SET state = ?, ack_note = ?, ack_by = ?, ack_at = ? WHERE id = ?",
                       (REPORTED, note, actor, now, incident_id))
            self.audit.append(tx, "incident.ack", actor=actor, source=source, tenant=incident.tenant,
                              incident=incident_id, kind=incident.kind, note=note,
                              late=now > incident.deadline)
            return self._get(tx, incident_id)


def _detail(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _incident(row: Any) -> Incident:
    fields = {name: row[name] for name in Incident.__dataclass_fields__}
    return Incident(**{**fields, "state": IncidentState(fields["state"])})

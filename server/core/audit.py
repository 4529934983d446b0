"""The tamper-evident audit log: append-only records, each carrying the SHA-256 of the previous.

hash = SHA-256(canonical JSON of [seq, ts, event, actor, tenant, delivery, source, detail, prev]).
Editing, deleting, inserting or reordering a record breaks the chain at that record; see
docs/audit.md for what the chain can and cannot show. Never file contents or secrets.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Iterator

from ..logsafe import quoted
from .clock import Clock, iso
from .state import Database, Tx

GENESIS = "0" * 64
log = logging.getLogger("sluis.audit")


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(seq: int, ts: str, event: str, actor: str, tenant: str | None,
                delivery: str | None, source: str | None, detail: dict[str, Any], prev: str) -> str:
    payload = canonical([seq, ts, event, actor, tenant, delivery, source, detail, prev])
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: str
    event: str
    actor: str
    tenant: str | None
    delivery: str | None
    source: str | None
    detail: dict[str, Any]
    prev: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    bad_seq: int | None = None
    reason: str = ""


class AuditLog:
    """Appends records inside the caller's transaction, so state and its record commit together."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def append(self, tx: Tx, event: str, *, actor: str, tenant: str | None = None,
               delivery: str | None = None, source: str | None = None, **detail: Any) -> int:
        last = tx.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        ts = iso(self.clock.now())
        digest = record_hash(seq, ts, event, actor, tenant, delivery, source, detail, prev)
        tx.execute("INSERT INTO audit (seq, ts, event, actor, tenant, delivery, source, detail, prev, hash)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (seq, ts, event, actor, tenant, delivery, source, canonical(detail), prev, digest))
        # The log line doubles as an outside anchor of the chain head (journald keeps it apart).
        # Client-supplied fields are quoted (server/logsafe.py) so none can pass for another field.
        tx.after_commit(lambda: log.info("audit #%d %s actor=%s tenant=%s delivery=%s source=%s %s hash=%s",
                                         seq, event, quoted(actor), quoted(tenant), quoted(delivery),
                                         quoted(source), canonical(detail), digest[:16]))
        return seq

    def record(self, event: str, **kwargs: Any) -> int:
        """Append one record in a transaction of its own."""
        with self.db.transaction() as tx:
            return self.append(tx, event, **kwargs)

    def records(self, since: str | None = None, tenant: str | None = None) -> Iterator[AuditRecord]:
        where, params = ["1 = 1"], []
        if since:
            where.append("ts >= ?")
            params.append(since)
        if tenant:
            where.append("tenant = ?")
            params.append(tenant)
        for row in self.db.utils["audit"].rows_where(" AND ".join(where), params, order_by="seq"):
            yield _row_record(row)

    def verify(self) -> Verification:
        """Walk the whole chain; the first record whose links or hash do not hold is named.

        After pruning, the first kept record links to a pruned one; an `audit.prune` record
        later in the chain must vouch for exactly that link.
        """
        rows = self.db.query("SELECT * FROM audit ORDER BY rowid")
        prev, expected_seq, checked = GENESIS, None, 0
        for row in rows:
            try:
                rec = _row_record(row)
            except ValueError:
                return Verification(False, checked, row["seq"], "detail is not valid JSON")
            if expected_seq is None and rec.prev != GENESIS:
                if not _vouched(rows, rec):
                    return Verification(False, checked, rec.seq,
                                        "earlier records are missing and no audit.prune record accounts for them")
                prev = rec.prev
            elif expected_seq is not None and rec.seq != expected_seq:
                return Verification(False, checked, rec.seq,
                                    f"sequence jumps from {expected_seq - 1} to {rec.seq} (records deleted or reordered)")
            if rec.prev != prev:
                return Verification(False, checked, rec.seq,
                                    "does not link to the record before it (deleted, inserted or reordered)")
            digest = record_hash(rec.seq, rec.ts, rec.event, rec.actor, rec.tenant, rec.delivery,
                                 rec.source, rec.detail, rec.prev)
            if digest != rec.hash:
                return Verification(False, checked, rec.seq, "content does not match its hash (edited)")
            prev, expected_seq, checked = rec.hash, rec.seq + 1, checked + 1
        return Verification(True, checked)

    def prune(self, before: str, *, actor: str) -> int:
        """Delete records older than `before`, leaving an audit.prune record that vouches for the cut."""
        with self.db.transaction() as tx:
            last = tx.execute("SELECT seq, hash FROM audit WHERE ts < ? ORDER BY seq DESC LIMIT 1",
                              (before,)).fetchone()
            if last is None:
                return 0
            count = tx.execute("SELECT COUNT(*) FROM audit WHERE seq <= ?", (last[0],)).fetchone()[0]
            # Append before deleting: the prune record must continue the chain (next seq, linked
            # to the current head) even when every record is old; appending to an emptied table
            # would restart at seq 1 from GENESIS and cut the log loose from its past.
            self.append(tx, "audit.prune", actor=actor, pruned_through=last[0], last_hash=last[1],
                        count=count, before=before)
            tx.execute("DELETE FROM audit WHERE seq <= ?", (last[0],))
            return count

    def head(self) -> tuple[int, str]:
        row = self.db.query_one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return (row[0], row[1]) if row else (0, GENESIS)


def _vouched(rows: list[Any], first: AuditRecord) -> bool:
    for row in rows:
        if row["event"] == "audit.prune":
            detail = json.loads(row["detail"])
            if detail.get("last_hash") == first.prev and detail.get("pruned_through") == first.seq - 1:
                return True
    return False


def _row_record(row: Any) -> AuditRecord:
    return AuditRecord(seq=row["seq"], ts=row["ts"], event=row["event"], actor=row["actor"],
                       tenant=row["tenant"], delivery=row["delivery"], source=row["source"],
                       detail=json.loads(row["detail"]), prev=row["prev"], hash=row["hash"])

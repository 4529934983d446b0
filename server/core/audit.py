"""The tamper-evident audit log: append-only records, each carrying a keyed hash of itself and the
previous record's hash.

hash = HMAC-SHA256(audit key, canonical JSON of [seq, ts, event, actor, tenant, delivery, source,
detail, prev]); records from before the audit key existed (before the first `audit.rekey`)
keep their plain SHA-256. Editing, deleting, inserting or reordering a record breaks the chain
at that record, and without the key nobody can rebuild it; signed checkpoints of the head
(checkpoints.py) catch truncation. docs/audit.md is the byte-for-byte spec. Never file
contents or secrets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..logsafe import quoted
from .keyfiles import KeyFileError
from .auditkey import AuditKey, create_audit_key, load_audit_key
from .clock import Clock, iso
from .store import Store, Tx

GENESIS = "0" * 64
REKEY = "audit.rekey"
PRUNE = "audit.prune"
BROKEN = "audit.broken"
log = logging.getLogger("sluis.audit")


class NotCanonical(ValueError):
    """Stored JSON that is not exactly one canonical text (duplicate keys, spacing, key order)."""


def canonical(value: Any) -> str:
    """The one stored form: keys sorted, no spaces, UTF-8 (not \\u escapes), no NaN/Infinity."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise NotCanonical(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise NotCanonical(f"{name} is not JSON")


def parse_canonical(text: str) -> Any:
    """Parse stored JSON, refusing duplicate keys and any text not in canonical form."""
    value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    if canonical(value) != text:
        raise NotCanonical("not in canonical form (key order, spacing or escapes differ)")
    return value


def payload(seq: int, ts: str, event: str, actor: str, tenant: str | None, delivery: str | None,
            source: str | None, detail: dict[str, Any], prev: str) -> bytes:
    """The exact bytes a record's hash covers."""
    return canonical([seq, ts, event, actor, tenant, delivery, source, detail, prev]).encode()


def record_hash(seq: int, ts: str, event: str, actor: str, tenant: str | None,
                delivery: str | None, source: str | None, detail: dict[str, Any], prev: str,
                key: AuditKey | None = None) -> str:
    """HMAC-SHA256 under `key`; plain SHA-256 (records from before the audit key) without one."""
    data = payload(seq, ts, event, actor, tenant, delivery, source, detail, prev)
    return key.mac(data) if key is not None else hashlib.sha256(data).hexdigest()


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
    keyed: int = 0
    unkeyed: int = 0
    head: tuple[int, str] = (0, GENESIS)


class AuditLog:
    """Appends records inside the caller's transaction, so state and its record commit together."""

    def __init__(self, db: Store, clock: Clock, key: AuditKey) -> None:
        self.db = db
        self.clock = clock
        self.key = key

    def append(self, tx: Tx, event: str, *, actor: str, tenant: str | None = None,
               delivery: str | None = None, source: str | None = None, **detail: Any) -> int:
        tx.lock_audit()
        last = tx.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        ts = iso(self.clock.now())
        digest = record_hash(seq, ts, event, actor, tenant, delivery, source, detail, prev, self.key)
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
        with self.db.writer() as tx:
            return self.append(tx, event, **kwargs)

    def records(self, since: str | None = None, tenant: str | None = None) -> Iterator[AuditRecord]:
        where, params = ["1 = 1"], []
        if since:
            where.append("ts >= ?")
            params.append(since)
        if tenant:
            where.append("tenant = ?")
            params.append(tenant)
        for row in self.db.query(f"SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY seq", params):
            yield _row_record(row)

    def verify(self) -> Verification:
        """Walk the whole chain; the first record whose links or hash do not hold is named.

        After pruning, the first kept record links to a pruned one; an `audit.prune` record
        later in the chain must vouch for exactly that link.
        """
        return self._walk(self.db.query("SELECT * FROM audit ORDER BY seq"))

    def verify_since(self, seq: int, digest: str) -> Verification:
        """Walk from record `seq` (whose hash must be `digest`) to the head: the cheap check
        before signing a checkpoint. A checkpointed record that was pruned is accepted when an
        `audit.prune` record vouches for the cut after it; a missing head is truncation."""
        rows = self.db.query("SELECT * FROM audit WHERE seq >= ? ORDER BY seq", (seq,))
        if not rows:
            head = self.db.query_one("SELECT MAX(seq) FROM audit")[0]
            missing = f"#{(head or 0) + 1}..#{seq}" if head else "every record"
            return Verification(False, 0, seq, f"records {missing} are missing (truncated): the checkpoint "
                                               f"of #{seq} saw them")
        first = rows[0]
        if first["seq"] == seq:
            if first["hash"] != digest:
                return Verification(False, 0, seq, "does not match the checkpoint of it (rewritten)")
            return self._walk(rows, first_prev=first["prev"])
        oldest = self.db.query_one("SELECT MIN(seq) FROM audit")[0]
        if oldest != first["seq"]:
            return Verification(False, 0, first["seq"],
                                f"records #{seq}..#{first['seq'] - 1} are missing (deleted)")
        return self._walk(rows)

    def _walk(self, rows: list[Any], first_prev: str | None = None) -> Verification:
        """Check links, sequence, canonical form and (keyed) hash of `rows`, oldest first."""
        rekey = self.db.query_one("SELECT MIN(seq) FROM audit WHERE event = ?", (REKEY,))[0]
        prev, expected_seq, checked, keyed = first_prev or GENESIS, None, 0, 0
        for row in rows:
            def broken(reason: str, seq: int = row["seq"]) -> Verification:
                return Verification(False, checked, seq, reason, keyed, checked - keyed)
            try:
                rec = _row_record(row)
            except NotCanonical as exc:
                return broken(f"detail is not canonical JSON: {exc}")
            except ValueError:
                return broken("detail is not valid JSON")
            if expected_seq is None and first_prev is None and rec.prev != GENESIS:
                if not _vouched(rows, rec):
                    return broken("earlier records are missing and no audit.prune record accounts for them")
                prev = rec.prev
            elif expected_seq is not None and rec.seq != expected_seq:
                return broken(f"sequence jumps from {expected_seq - 1} to {rec.seq} "
                              "(records deleted or reordered)")
            if rec.prev != prev:
                return broken("does not link to the record before it (deleted, inserted or reordered)")
            # Records before the first audit.rekey predate the key; with no rekey, all are keyed.
            is_keyed = rekey is None or rec.seq >= rekey
            digest = record_hash(rec.seq, rec.ts, rec.event, rec.actor, rec.tenant, rec.delivery,
                                 rec.source, rec.detail, rec.prev, self.key if is_keyed else None)
            if digest != rec.hash:
                return broken("content does not match its hash (edited, or rewritten without the audit key)")
            prev, expected_seq, checked = rec.hash, rec.seq + 1, checked + 1
            keyed += is_keyed
        head = (rows[-1]["seq"], rows[-1]["hash"]) if rows else (0, GENESIS)
        return Verification(True, checked, keyed=keyed, unkeyed=checked - keyed, head=head)

    def prune(self, before: str, *, actor: str) -> int:
        """Delete records older than `before`, leaving an audit.prune record that vouches for the cut."""
        with self.db.writer() as tx:
            last = tx.execute("SELECT seq, hash FROM audit WHERE ts < ? ORDER BY seq DESC LIMIT 1",
                              (before,)).fetchone()
            if last is None:
                return 0
            count = tx.execute("SELECT COUNT(*) FROM audit WHERE seq <= ?", (last[0],)).fetchone()[0]
            # Append before deleting: the prune record must continue the chain (next seq, linked
            # to the current head) even when every record is old; appending to an emptied table
            # would restart at seq 1 from GENESIS and cut the log loose from its past.
            self.append(tx, PRUNE, actor=actor, pruned_through=last[0], last_hash=last[1],
                        count=count, before=before)
            tx.execute("DELETE FROM audit WHERE seq <= ?", (last[0],))
            return count

    def head(self) -> tuple[int, str]:
        row = self.db.query_one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return (row[0], row[1]) if row else (0, GENESIS)

    def check_point(self, seq: int, digest: str) -> str | None:
        """What is wrong with the chain against one checkpoint (#seq had `digest`), or None."""
        row = self.db.query_one("SELECT hash FROM audit WHERE seq = ?", (seq,))
        if row is not None:
            return None if row[0] == digest else f"record #{seq} differs from the checkpoint of it (rewritten)"
        oldest, newest = self.db.query_one("SELECT MIN(seq), MAX(seq) FROM audit")
        if newest is None:
            return f"every record is missing (the audit table is empty); the checkpoint saw records up to #{seq}"
        if newest < seq:
            return f"records #{newest + 1}..#{seq} are missing (the newest records were deleted)"
        if seq < oldest:
            pruned = [r.detail.get("pruned_through", 0) for r in self._events(PRUNE)]
            if pruned and max(pruned) >= seq:
                return None  # pruned with a record that says so; the walk checks that record
            return f"records #{seq}..#{oldest - 1} are missing (deleted, and no audit.prune record says so)"
        return f"record #{seq} is missing (deleted)"

    def latest(self, event: str) -> AuditRecord | None:
        """The newest record of one kind (None if there is none or it does not parse)."""
        found = self._events(event, newest_only=True)
        return found[0] if found else None

    def events_after(self, seq: int, events: Sequence[str]) -> list[AuditRecord]:
        """Records of these kinds after #seq, oldest first (ones that do not parse are skipped)."""
        rows = self.db.query(f"SELECT * FROM audit WHERE seq > ? AND event IN ({', '.join('?' * len(events))})"
                             " ORDER BY seq", (seq, *events))
        return [record for record in map(_parsed, rows) if record is not None]

    def _events(self, event: str, *, newest_only: bool = False) -> list[AuditRecord]:
        sql = "SELECT * FROM audit WHERE event = ? ORDER BY seq DESC" + (" LIMIT 1" if newest_only else "")
        found = []
        for row in self.db.query(sql, (event,)):
            try:
                found.append(_row_record(row))
            except ValueError:
                continue
        return found


def has_records(db: Store) -> bool:
    """Whether the audit log holds any record (a database already in use by a setup)."""
    return db.query_one("SELECT 1 FROM audit LIMIT 1") is not None


def open_audit_log(db: Store, clock: Clock, key_file: Path,
                   credentials_dir: str | None) -> tuple[AuditLog, AuditKey]:
    """The audit log with its key; an old setup without a key gets one (and an audit.rekey record)."""
    key = load_audit_key(key_file, credentials_dir) or _upgrade(db, clock, key_file)
    return AuditLog(db, clock, key), key


def _upgrade(db: Store, clock: Clock, key_file: Path) -> AuditKey:
    """Create the audit key for a chain that has none, and append `audit.rekey` (keyed, linked to
    the last plain-SHA-256 hash) so every later record is keyed.

    Only here, when the key does not exist yet: with a key present, an unkeyed head is a chain
    rebuilt without the key and must fail verification, not be adopted. A missing key on a chain
    that is already keyed is an error too: a new key could not verify the old records. The key
    file is created under the write lock, so no other process appends with it before the rekey.
    """
    created = False
    try:
        with db.writer() as tx:
            tx.lock_audit()                        # PostgreSQL: writers are not serial otherwise
            if os.path.lexists(key_file):          # another process upgraded while we waited
                return create_audit_key(key_file)
            row = tx.execute("SELECT * FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            if row is not None and not _unkeyed_head(tx, row):
                raise KeyFileError(f"audit key {key_file} is missing but the audit chain is keyed: restore "
                                   "the key file (or the credential sluis-audit-key); a new key cannot verify it")
            key, created = create_audit_key(key_file), True
            if row is not None:
                count = tx.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
                seq = AuditLog(db, clock, key).append(
                    tx, REKEY, actor="sluis", unkeyed_through=row["seq"], unkeyed_head=row["hash"],
                    unkeyed_records=count, key=key.public.key_id)
                log.warning("audit key %s created; the chain is keyed from #%d on", key_file, seq)
    except BaseException:
        if created:
            os.unlink(key_file)                    # no key without its audit.rekey record
        raise
    return key


def _unkeyed_head(db: Store | Tx, row: Any) -> bool:
    """True for a chain from before the audit key: no audit.rekey yet and a plain-SHA-256 head."""
    if db.execute("SELECT 1 FROM audit WHERE event = ? LIMIT 1", (REKEY,)).fetchone():
        return False
    try:
        rec = _row_record(row)
    except ValueError:
        return False
    return record_hash(rec.seq, rec.ts, rec.event, rec.actor, rec.tenant, rec.delivery, rec.source,
                       rec.detail, rec.prev) == rec.hash


def _vouched(rows: list[Any], first: AuditRecord) -> bool:
    for row in rows:
        if row["event"] == PRUNE:
            try:
                detail = parse_canonical(row["detail"])
            except ValueError:
                continue
            if detail.get("last_hash") == first.prev and detail.get("pruned_through") == first.seq - 1:
                return True
    return False


def _parsed(row: Any) -> AuditRecord | None:
    try:
        return _row_record(row)
    except ValueError:
        return None


def _row_record(row: Any) -> AuditRecord:
    return AuditRecord(seq=row["seq"], ts=row["ts"], event=row["event"], actor=row["actor"],
                       tenant=row["tenant"], delivery=row["delivery"], source=row["source"],
                       detail=parse_canonical(row["detail"]), prev=row["prev"], hash=row["hash"])

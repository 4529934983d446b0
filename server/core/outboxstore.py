"""The key-message tables (outbox, secrets, resends): every SQL statement of key delivery.

Jobs are claimed with a lease (`claimed_by`, `lease_until`): a process takes due jobs in one
writer transaction (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so two processes never take the same
row), works them, and clears the lease when it records the outcome. A process that dies holding
a lease loses it when `lease_until` passes; another process then takes the job over. States and
the lease rules are in docs/keydelivery.md.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, replace
from typing import Any

from .schema import POSTGRESQL
from .store import Reader, Store, Tx


class JobKind(enum.StrEnum):
    SMS = "sms"          # the passphrase, to one of the tenant's phones
    EMAIL = "email"      # 'a file is waiting' to the tenant's address (never a passphrase)
    ALERT = "alert"      # to the operator (or a sender): logged, audited, mailed if e-mail is on


class JobState(enum.StrEnum):
    PENDING = "pending"          # due at next_attempt_at (first try or a retry)
    SENDING = "sending"          # an SMS attempt is recorded (attempts+1, last_attempt_at) and the
                                 # provider call is in flight; revocation leaves it alone
    SENT = "sent"                # accepted by the provider; an SMS is then polled for its status
    DELIVERED = "delivered"      # the provider confirmed delivery to the phone
    UNDELIVERED = "undelivered"  # the provider gave up (final status undelivered/failed)
    FAILED = "failed"            # permanent error on sending: not retried, operator alerted
    CANCELLED = "cancelled"      # never handed to the provider: the delivery was removed first, or
                                 # the phone was no longer the tenant's at send time
    MAYBE_SENT = "maybe_sent"    # a crash cut an attempt short and the delivery no longer waits, so
                                 # it is not retried: the provider may or may not have accepted it


class Redaction(enum.IntEnum):
    """Whether the SMS body was erased at the provider (stored as 0, 1, 2)."""

    NOT_YET = 0
    DONE = 1
    GAVE_UP = 2


IN_FLIGHT = (JobState.PENDING, JobState.SENDING)   # an SMS that may still need the sealed passphrase


@dataclass(frozen=True)
class Job:
    id: int
    delivery_id: str
    kind: JobKind
    target: str
    state: JobState
    attempts: int
    next_attempt_at: str
    provider_id: str | None
    provider_status: str | None
    polls: int
    redacted: int            # a Redaction
    redact_attempts: int
    last_error: str | None
    payload: dict[str, Any]
    last_attempt_at: str | None = None   # when the last provider call began (SMS)
    claimed_by: str | None = None        # the process holding the job's lease, until lease_until
    lease_until: str | None = None


def job_from_row(row: Any) -> Job:
    fields = {k: row[k] for k in row.keys() if k in Job.__dataclass_fields__ and k != "payload"}
    fields["kind"], fields["state"] = JobKind(fields["kind"]), JobState(fields["state"])
    return Job(**fields, payload=json.loads(row["payload"]))


UPDATABLE = frozenset(("state", "attempts", "next_attempt_at", "provider_id", "provider_status", "polls",
                       "redacted", "redact_attempts", "last_error", "last_attempt_at", "claimed_by",
                       "lease_until", "updated_at"))
DUE = ("next_attempt_at <= ? AND (lease_until IS NULL OR lease_until <= ?) AND"
       " (state = ? OR (state = ? AND kind = ? AND polls < ?) OR"
       "  (state IN (?, ?) AND kind = ? AND redacted = ? AND ?))")


class OutboxStore:
    """Repository of the outbox, its sealed secrets and the resend log."""

    def __init__(self, db: Store) -> None:
        self.db = db

    def _skip_locked(self) -> str:
        """Row locks that let several processes claim at once (PostgreSQL); SQLite has one writer."""
        return " FOR UPDATE SKIP LOCKED" if self.db.dialect == POSTGRESQL else ""

    def _for_update(self) -> str:
        return " FOR UPDATE" if self.db.dialect == POSTGRESQL else ""

    # --- secrets --------------------------------------------------------------------------------
    def add_secret(self, tx: Tx, delivery_id: str, sealed: bytes) -> None:
        tx.execute("INSERT INTO secrets (delivery_id, sealed) VALUES (?, ?)", (delivery_id, sealed))

    def secret(self, conn: Reader, delivery_id: str) -> bytes | None:
        row = conn.execute("SELECT sealed FROM secrets WHERE delivery_id = ?", (delivery_id,)).fetchone()
        return bytes(row[0]) if row else None

    def delete_secret(self, tx: Tx, delivery_id: str) -> bool:
        return tx.execute("DELETE FROM secrets WHERE delivery_id = ?", (delivery_id,)).rowcount > 0

    def sealed_deliveries(self) -> list[str]:
        """Deliveries whose sealed passphrase is still kept."""
        return [r[0] for r in self.db.query("SELECT delivery_id FROM secrets ORDER BY delivery_id")]

    def delivery_ending(self, tx: Tx, delivery_id: str) -> tuple[str | None, str]:
        """(tenant name, delivery state) for the record of a key's destruction."""
        row = tx.execute("SELECT t.name, d.state FROM deliveries d JOIN tenants t ON t.id = d.tenant_id"
                         " WHERE d.id = ?", (delivery_id,)).fetchone()
        return (row[0], row[1]) if row else (None, "unknown")

    # --- resends --------------------------------------------------------------------------------
    def resent_since(self, tx: Tx, delivery_id: str, since: str) -> bool:
        return tx.execute("SELECT 1 FROM resends WHERE delivery_id = ? AND requested_at > ?",
                          (delivery_id, since)).fetchone() is not None

    def add_resend(self, tx: Tx, delivery_id: str, at: str, by: str) -> None:
        tx.execute("INSERT INTO resends (delivery_id, requested_at, requested_by) VALUES (?, ?, ?)",
                   (delivery_id, at, by))

    # --- jobs -----------------------------------------------------------------------------------
    def insert(self, tx: Tx, delivery_id: str, kind: JobKind, target: str, payload: dict[str, Any],
               now: str) -> int:
        cur = tx.execute("INSERT INTO outbox (delivery_id, kind, target, state, next_attempt_at,"
                         " payload, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                         (delivery_id, str(kind), target, str(JobState.PENDING), now, json.dumps(payload),
                          now, now))
        return int(cur.fetchone()[0])

    def get(self, conn: Reader, job_id: int, *, lock: bool = False) -> Job | None:
        """One job; `lock` (inside a writer) holds its row until commit (PostgreSQL)."""
        row = conn.execute("SELECT * FROM outbox WHERE id = ?" + (self._for_update() if lock else ""),
                           (job_id,)).fetchone()
        return job_from_row(row) if row else None

    def for_delivery(self, conn: Reader, delivery_id: str) -> list[Job]:
        return [job_from_row(r) for r in conn.execute("SELECT * FROM outbox WHERE delivery_id = ? ORDER BY id",
                                                      (delivery_id,)).fetchall()]

    def all(self) -> list[Job]:
        return [job_from_row(r) for r in self.db.query("SELECT * FROM outbox ORDER BY id")]

    def update(self, tx: Tx, job_id: int, changes: dict[str, Any]) -> None:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"not an updatable outbox column: {sorted(unknown)}")
        values = [str(v) if isinstance(v, enum.StrEnum) else v for v in changes.values()]
        values = [int(v) if isinstance(v, enum.IntEnum) else v for v in values]
        assignments = ", ".join(f"{key} = ?" for key in changes)
        tx.execute(f"UPDATE outbox SET {assignments} WHERE id = ?", (*values, job_id))

    def cancel_waiting(self, tx: Tx, delivery_id: str, reason: str, now: str) -> None:
        """Cancel what has not gone out (pending key messages; alerts still go)."""
        tx.execute("UPDATE outbox SET state = ?, last_error = ?, updated_at = ?, claimed_by = NULL,"
                   " lease_until = NULL WHERE delivery_id = ? AND state = ? AND kind != ?",
                   (str(JobState.CANCELLED), reason, now, delivery_id, str(JobState.PENDING),
                    str(JobKind.ALERT)))

    def sms_in_flight(self, tx: Tx, delivery_id: str) -> int:
        return int(tx.execute("SELECT COUNT(*) FROM outbox WHERE delivery_id = ? AND kind = ? AND state IN (?, ?)",
                              (delivery_id, str(JobKind.SMS), *map(str, IN_FLIGHT))).fetchone()[0])

    def claim_due(self, owner: str, now: str, lease_until: str, limit: int, *, poll_limit: int,
                  redact: bool) -> list[Job]:
        """Lease up to `limit` jobs due now to `owner`: ones to send, sent SMS whose status is due
        to be polled, finished SMS to redact; none another live process holds."""
        with self.db.writer() as tx:
            rows = tx.execute(f"SELECT * FROM outbox WHERE {DUE} ORDER BY next_attempt_at, id LIMIT ?"
                              + self._skip_locked(),
                              (now, now, str(JobState.PENDING), str(JobState.SENT), str(JobKind.SMS), poll_limit,
                               str(JobState.DELIVERED), str(JobState.UNDELIVERED), str(JobKind.SMS),
                               int(Redaction.NOT_YET), bool(redact), limit)).fetchall()
            jobs = [job_from_row(r) for r in rows]
            for job in jobs:
                tx.execute("UPDATE outbox SET claimed_by = ?, lease_until = ? WHERE id = ?",
                           (owner, lease_until, job.id))
        return [replace(job, claimed_by=owner, lease_until=lease_until) for job in jobs]

    def release(self, owner: str, job_ids: list[int]) -> None:
        """Give back leases not worked on, so another process need not wait for them to expire."""
        if not job_ids:
            return
        with self.db.writer() as tx:
            for job_id in job_ids:
                tx.execute("UPDATE outbox SET claimed_by = NULL, lease_until = NULL WHERE id = ? AND claimed_by = ?",
                           (job_id, owner))

    def sending(self) -> list[int]:
        """SMS attempts recorded as in flight (the caller decides whose process is gone)."""
        return [r[0] for r in self.db.query("SELECT id FROM outbox WHERE state = ? ORDER BY id",
                                            (str(JobState.SENDING),))]

    def lease_holders(self, other_than: str) -> list[str]:
        """The processes holding leases now, but `other_than`."""
        return [r[0] for r in self.db.query("SELECT DISTINCT claimed_by FROM outbox WHERE claimed_by IS NOT NULL"
                                            " AND claimed_by != ?", (other_than,))]

    def drop_leases(self, owner: str) -> None:
        """Free the jobs a stopped process held but had not begun to send (`sending` ones are
        settled by reconciliation, which records what may have gone out)."""
        with self.db.writer() as tx:
            tx.execute("UPDATE outbox SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = ? AND state != ?",
                       (owner, str(JobState.SENDING)))

"""The durable outbox: key messages are rows written in the transaction that publishes the
delivery, so a published delivery always has its jobs and an unpublished one never does.

The passphrase is kept only sealed (SecretBox, key from the secret-key file or credential), and
only while a message may still need it: it is destroyed once the delivery is collected or
removed and no SMS for it is still waiting to go out. Job states are in docs/keydelivery.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable

from ..config.settings import Settings, SmsSettings
from ..server.core.audit import AuditLog
from ..server.core.clock import Clock, iso
from ..server.core.deliveries import PUBLISHED, fetch
from ..server.core.directory import tenant_name, tenant_phones
from ..server.core.records import Delivery, Tenant
from ..server.core.store import Store, Tx
from ..server.errors import Busy, InvalidInput, NotFound
from .sealing import Sealer

SMS, EMAIL, ALERT = "sms", "email", "alert"
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
WAITING = (PENDING,)
IN_FLIGHT = (PENDING, SENDING)   # an SMS that may still need the sealed passphrase
STATES = (PENDING, SENDING, SENT, DELIVERED, UNDELIVERED, FAILED, CANCELLED, MAYBE_SENT)


@dataclass(frozen=True)
class Job:
    id: int
    delivery_id: str
    kind: str
    target: str
    state: str
    attempts: int
    next_attempt_at: str
    provider_id: str | None
    provider_status: str | None
    polls: int
    redacted: int            # 0 not yet, 1 erased at the provider, 2 gave up
    redact_attempts: int
    last_error: str | None
    payload: dict[str, Any]
    last_attempt_at: str | None = None   # when the last provider call began (SMS)


@dataclass(frozen=True)
class Claim:
    """An SMS attempt recorded as `sending` before the provider call: what to send, and its number."""

    job: Job
    passphrase: str = field(repr=False)   # never in a log line or traceback
    attempt: int


def backoff_seconds(sms: SmsSettings, attempts: int, retry_after: float | None, jitter: float) -> float:
    """Exponential backoff from [sms] retry_initial to retry_max, with jitter (0..1 scales it by
    +-20%); a provider's Retry-After wins if longer. Key messages and notifications share it."""
    wait = min(sms.retry_max, sms.retry_initial * 2 ** max(attempts - 1, 0)) * (0.8 + 0.4 * jitter)
    return max(wait, retry_after or 0.0)


def job_from_row(row: Any) -> Job:
    return Job(**{k: row[k] for k in row.keys() if k in Job.__dataclass_fields__ and k != "payload"},
               payload=json.loads(row["payload"]))


class Outbox:
    """KeyHandoff for the drop-box core, and the job store the worker drains."""

    def __init__(self, settings: Settings, db: Store, audit: AuditLog, clock: Clock,
                 sealer: Callable[[], Sealer]) -> None:
        """`sealer` is called on first use, so that commands which never touch a passphrase
        (tenant, user, status) run without access to the secret key."""
        self.settings = settings
        self.db = db
        self.audit = audit
        self.clock = clock
        self.sealer = sealer
        self._wake: Callable[[], None] = lambda: None

    def on_wake(self, callback: Callable[[], None]) -> None:
        self._wake = callback

    def wake(self) -> None:
        self._wake()

    # --- KeyHandoff ----------------------------------------------------------------------------
    def enqueue(self, tx: Tx, delivery: Delivery, tenant: Tenant, passphrase: str) -> int:
        tx.execute("INSERT INTO secrets (delivery_id, sealed) VALUES (?, ?)",
                   (delivery.id, self.sealer().seal(passphrase.encode())))
        jobs = [(SMS, phone) for phone in tenant.phones]
        if self.settings.email.enabled and tenant.email:
            jobs.append((EMAIL, tenant.email))
        for kind, target in jobs:
            self._insert(tx, delivery.id, kind, target)
        return len(jobs)

    def revoke(self, tx: Tx, delivery_id: str, reason: str) -> None:
        """Destroy the key and cancel what has not gone out; an attempt in flight (`sending`) is
        left to the worker, which records what the provider answers."""
        self._destroy_key(tx, delivery_id, f"delivery {reason}")
        tx.execute("UPDATE outbox SET state = ?, last_error = ?, updated_at = ? WHERE delivery_id = ?"
                   " AND state = ? AND kind != ?", (CANCELLED, f"delivery {reason}", self._now(),
                                                     delivery_id, PENDING, ALERT))

    def collected(self, tx: Tx, delivery_id: str) -> None:
        self.destroy_if_done(tx, delivery_id)

    # --- SMS attempts: bound to the tenant's phones, recorded before the provider call ----------
    def phones(self, conn: Tx | Store, tenant_id: int) -> list[str]:
        """The tenant's registered phones now, in order."""
        return tenant_phones(conn, tenant_id)

    def claim(self, job: Job, tenant_id: int, tenant: str) -> Claim | None:
        """Record an SMS attempt (`sending`, attempts+1, the time) in one transaction, or settle the job.

        Returns None, with the job settled and audited, when it must not be sent: it is no longer
        `pending` (revoked meanwhile), the key is gone, or its phone is no longer one of the
        tenant's (cancelled; operator alerted). Phones added to the tenant since publishing do not
        get the key automatically: the operator is alerted once per phone and may resend.
        """
        with self.db.writer() as tx:
            row = tx.execute("SELECT * FROM outbox WHERE id = ?", (job.id,)).fetchone()
            if row is None or row["state"] != PENDING:
                return None
            job = job_from_row(row)
            phones = self.phones(tx, tenant_id)
            self._alert_added_phones(tx, job, tenant, phones)
            if job.target not in phones:
                self._cancel(tx, job, tenant, "phone_removed",
                             f"{job.target} is no longer a registered phone of {tenant} (removed or "
                             "changed after the file was published): the key was not sent to it",
                             alert=True)
                return None
            sealed = tx.execute("SELECT sealed FROM secrets WHERE delivery_id = ?", (job.delivery_id,)).fetchone()
            if sealed is None:  # revoked or destroyed while the job waited
                self._cancel(tx, job, tenant, "key_gone", "key no longer available")
                return None
            attempt = job.attempts + 1
            self.update(tx, job, state=SENDING, attempts=attempt, last_attempt_at=self._now())
            passphrase = self.sealer().open(sealed[0]).decode()
        return Claim(job=job, passphrase=passphrase, attempt=attempt)

    def _cancel(self, tx: Tx, job: Job, tenant: str, why: str, message: str, *, alert: bool = False) -> None:
        self.update(tx, job, state=CANCELLED, last_error=message)
        self.audit.append(tx, "key.sms.cancelled", actor="sluis", tenant=tenant, delivery=job.delivery_id,
                          phone=job.target, attempts=job.attempts, why=why, reason=message)
        if alert:
            self.alert(tx, job.delivery_id, phone=job.target, reason=message)
        self.destroy_if_done(tx, job.delivery_id)

    def _alert_added_phones(self, tx: Tx, job: Job, tenant: str, phones: list[str]) -> None:
        """Tell the operator (once per delivery and phone) about phones registered since publishing."""
        jobs = [job_from_row(r) for r in tx.execute("SELECT * FROM outbox WHERE delivery_id = ?", (job.delivery_id,))]
        known = {j.target for j in jobs if j.kind == SMS} | {j.payload.get("added_phone") for j in jobs}
        for phone in phones:
            if phone in known:
                continue
            reason = (f"{phone} was registered for {tenant} after the file was published; the key is "
                      "bound to the phones at publishing and was not sent to it. If it should have the key: "
                      f"sluis key resend {job.delivery_id} --phone {phone}")
            self.alert(tx, job.delivery_id, phone=phone, added_phone=phone, reason=reason)
            self.audit.append(tx, "key.phone.added", actor="sluis", tenant=tenant,
                              delivery=job.delivery_id, phone=phone, sent=False)

    def settle_sent(self, tx: Tx, job: Job) -> str:
        """The state a job takes once the provider accepted it: `sent`, unless something settled it."""
        current = tx.execute("SELECT state FROM outbox WHERE id = ?", (job.id,)).fetchone()[0]
        return SENT if current in (SENDING, PENDING) else current

    def reconcile(self) -> list[tuple[Job, str]]:
        """At startup: SMS attempts a crash cut short (`sending`) are retried if their delivery still
        waits (a duplicate SMS is acceptable, a lost one is not), else marked `maybe_sent` and the
        operator alerted. Audited as `key.sms.interrupted` either way. Returns (job, new state)."""
        settled: list[tuple[Job, str]] = []
        for row in self.db.query("SELECT id FROM outbox WHERE state = ? ORDER BY id", (SENDING,)):
            with self.db.writer() as tx:
                current = tx.execute("SELECT * FROM outbox WHERE id = ?", (row[0],)).fetchone()
                if current is None or current["state"] != SENDING:
                    continue
                job = job_from_row(current)
                delivery = fetch(tx, "id = ?", (job.delivery_id,))
                has_secret = tx.execute("SELECT 1 FROM secrets WHERE delivery_id = ?",
                                        (job.delivery_id,)).fetchone() is not None
                waits = bool(delivery) and delivery[0].state == PUBLISHED and has_secret
                tenant = tenant_name(tx, delivery[0].tenant_id) if delivery else None
                cut = (f"attempt {job.attempts} (begun {job.last_attempt_at}) was cut short by a stop or crash; "
                       "the provider may have accepted it")
                if waits:
                    state, message = PENDING, f"{cut}: sending again (a second SMS is possible)"
                    self.update(tx, job, state=PENDING, next_attempt_at=self._now(), last_error=message)
                else:
                    why = delivery[0].state if delivery else "gone"
                    state, message = MAYBE_SENT, f"{cut}: not retried, the delivery is {why}"
                    self.update(tx, job, state=MAYBE_SENT, last_error=message)
                    self.alert(tx, job.delivery_id, phone=job.target, reason=f"the SMS to {job.target} may have "
                               f"been sent: {message}")
                    self.destroy_if_done(tx, job.delivery_id)
                self.audit.append(tx, "key.sms.interrupted", actor="sluis", tenant=tenant, delivery=job.delivery_id,
                                  phone=job.target, attempt=job.attempts, attempted_at=job.last_attempt_at,
                                  outcome=state, reason=message)
            settled.append((job, state))
        return settled

    # --- jobs ------------------------------------------------------------------------------------
    def _now(self) -> str:
        return iso(self.clock.now())

    def _insert(self, tx: Tx, delivery_id: str, kind: str, target: str, **payload: Any) -> int:
        now = self._now()
        cur = tx.execute("INSERT INTO outbox (delivery_id, kind, target, state, next_attempt_at,"
                         " payload, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                         (delivery_id, kind, target, PENDING, now, json.dumps(payload), now, now))
        return int(cur.fetchone()[0])

    def alert(self, tx: Tx, delivery_id: str, *, to: str | None = None, **details: Any) -> None:
        """Queue an alert for the operator (or `to`): mailed when e-mail is on; always logged and audited."""
        self._insert(tx, delivery_id, ALERT, to or self.settings.email.operator or "-", **details)

    def due(self, limit: int = 50) -> list[Job]:
        """Jobs to send now, sent SMS whose status is due to be polled, finished SMS to redact."""
        now = self._now()
        rows = self.db.query("SELECT * FROM outbox WHERE next_attempt_at <= ? AND"
                             " (state = ? OR (state = ? AND kind = ? AND polls < ?) OR"
                             "  (state IN (?, ?) AND kind = ? AND redacted = 0 AND ?))"
                             " ORDER BY next_attempt_at LIMIT ?",
                             (now, PENDING, SENT, SMS, self.settings.sms.poll_limit,
                              DELIVERED, UNDELIVERED, SMS, self.settings.sms.redact, limit))
        return [job_from_row(row) for row in rows]

    def jobs(self, delivery_id: str | None = None) -> list[Job]:
        where, params = ("WHERE delivery_id = ?", (delivery_id,)) if delivery_id else ("", ())
        return [job_from_row(r) for r in self.db.query(f"SELECT * FROM outbox {where} ORDER BY id", params)]

    def passphrase(self, delivery_id: str) -> str | None:
        row = self.db.query_one("SELECT sealed FROM secrets WHERE delivery_id = ?", (delivery_id,))
        return self.sealer().open(row[0]).decode() if row else None

    def update(self, tx: Tx, job: Job, **changes: Any) -> None:
        changes["updated_at"] = self._now()
        assignments = ", ".join(f"{key} = ?" for key in changes)
        tx.execute(f"UPDATE outbox SET {assignments} WHERE id = ?", (*changes.values(), job.id))

    def backoff(self, attempts: int, retry_after: float | None, jitter: float) -> str:
        """When to try again after `attempts` failed ones (see backoff_seconds)."""
        wait = backoff_seconds(self.settings.sms, attempts, retry_after, jitter)
        return iso(self.clock.now() + timedelta(seconds=wait))

    def poll_later(self, polls: int) -> str:
        return iso(self.clock.now() + timedelta(seconds=self.settings.sms.poll_interval * 2 ** polls))

    def destroy_if_done(self, tx: Tx, delivery_id: str) -> bool:
        """Destroy the sealed passphrase once no SMS needs it and the delivery is no longer pending."""
        pending = tx.execute("SELECT COUNT(*) FROM outbox WHERE delivery_id = ? AND kind = ? AND state IN (?, ?)",
                             (delivery_id, SMS, *IN_FLIGHT)).fetchone()[0]
        delivery = fetch(tx, "id = ?", (delivery_id,))
        if pending or (delivery and delivery[0].state == PUBLISHED):
            return False
        return self._destroy_key(tx, delivery_id, "collected, no key message waiting")

    def _destroy_key(self, tx: Tx, delivery_id: str, why: str) -> bool:
        """Delete the sealed passphrase; its destruction gets its own audit record (key.destroy)."""
        if tx.execute("DELETE FROM secrets WHERE delivery_id = ?", (delivery_id,)).rowcount == 0:
            return False
        row = tx.execute("SELECT t.name, d.state FROM deliveries d JOIN tenants t ON t.id = d.tenant_id"
                         " WHERE d.id = ?", (delivery_id,)).fetchone()
        # Recorded in the same transaction: the key is gone only if its record is written.
        self.audit.append(tx, "key.destroy", actor="sluis", tenant=row[0] if row else None,
                          delivery=delivery_id, state=row[1] if row else "unknown", reason=why)
        return True

    # --- operator actions ---------------------------------------------------------------------------
    def resend(self, delivery_id: str, *, actor: str, phone: str | None = None, source: str = "cli") -> list[str]:
        """Send the key again to every phone of the tenant (or one), at most once per interval."""
        with self.db.writer() as tx:
            found = fetch(tx, "id = ?", (delivery_id,))
            if not found:
                raise NotFound(f"no delivery {delivery_id!r}")
            delivery = found[0]
            has_secret = tx.execute("SELECT 1 FROM secrets WHERE delivery_id = ?", (delivery_id,)).fetchone()
            if delivery.state != PUBLISHED or not has_secret:
                raise InvalidInput(f"delivery {delivery_id} is {delivery.state}: its key was destroyed "
                                   "and cannot be sent again (upload the file again instead)")
            phones = self.phones(tx, delivery.tenant_id)
            if phone is not None:
                if phone not in phones:
                    raise InvalidInput(f"{phone} is not a registered phone of this delivery's tenant "
                                       f"(registered: {', '.join(phones)})")
                phones = [phone]
            since = iso(self.clock.now() - timedelta(seconds=self.settings.sms.resend_interval))
            if tx.execute("SELECT 1 FROM resends WHERE delivery_id = ? AND requested_at > ?",
                          (delivery_id, since)).fetchone():
                raise Busy(f"the key of {delivery_id} was resent less than "
                           f"{self.settings.sms.resend_interval}s ago; try again later")
            tx.execute("INSERT INTO resends (delivery_id, requested_at, requested_by) VALUES (?, ?, ?)",
                       (delivery_id, self._now(), actor))
            for target in phones:
                self._insert(tx, delivery_id, SMS, target, resend=True)
            tenant = tenant_name(tx, delivery.tenant_id)
            self.audit.append(tx, "key.resend", actor=actor, tenant=tenant, delivery=delivery_id,
                              source=source, phones=phones)
        self.wake()
        return phones

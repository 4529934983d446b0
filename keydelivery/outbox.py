"""The durable outbox: key messages are rows written in the transaction that publishes the
delivery, so a published delivery always has its jobs and an unpublished one never does.

The passphrase is kept only sealed (SecretBox, key from the secret-key file or credential), and
only while a message may still need it: it is destroyed once the delivery is collected or
removed and no SMS for it is still waiting to go out. Job states are in docs/keydelivery.md.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable

from ..config.settings import Settings, SmsSettings
from ..server.core import deliveries
from ..server.core.audit import AuditLog
from ..server.core.clock import Clock, iso
from ..server.core.deliveries import PUBLISHED
from ..server.core.directory import tenant_name, tenant_phones
from ..server.core.holders import holder_gone, process_name
from ..server.core.outboxstore import IN_FLIGHT, Job, JobKind, JobState, OutboxStore, Redaction, job_from_row
from ..server.core.records import Delivery, Tenant
from ..server.core.store import Store, Tx
from ..server.errors import Busy, InvalidInput, NotFound
from .sealing import Sealer

# The names the rest of the code has always used (the enums are in server/core/outboxstore.py).
SMS, EMAIL, ALERT = JobKind.SMS, JobKind.EMAIL, JobKind.ALERT
PENDING, SENDING, SENT = JobState.PENDING, JobState.SENDING, JobState.SENT
DELIVERED, UNDELIVERED, FAILED = JobState.DELIVERED, JobState.UNDELIVERED, JobState.FAILED
CANCELLED, MAYBE_SENT = JobState.CANCELLED, JobState.MAYBE_SENT
WAITING = (PENDING,)
STATES = tuple(JobState)
CHANNEL = "sluis_outbox"   # NOTIFY channel: a job was queued (wakes the workers of other processes)
__all__ = ["ALERT", "CANCELLED", "DELIVERED", "EMAIL", "FAILED", "IN_FLIGHT", "MAYBE_SENT", "PENDING", "SENDING",
           "SENT", "SMS", "STATES", "UNDELIVERED", "WAITING", "Claim", "Job", "Outbox", "Redaction",
           "backoff_seconds", "job_from_row"]


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


class Outbox:
    """KeyHandoff for the drop-box core, and the jobs the worker takes, works and settles.

    Several processes may work one outbox: a job is taken with a lease ([sms] lease) by one
    process (`take`), and its outcome recorded only while that process holds it."""

    def __init__(self, settings: Settings, db: Store, audit: AuditLog, clock: Clock,
                 sealer: Callable[[], Sealer], owner: str | None = None) -> None:
        """`sealer` is called on first use, so that commands which never touch a passphrase
        (tenant, user, status) run without access to the secret key."""
        self.settings = settings
        self.db = db
        self.store = OutboxStore(db)
        self.audit = audit
        self.clock = clock
        self.sealer = sealer
        self.owner = owner or process_name()
        self._wake: Callable[[], None] = lambda: None

    def on_wake(self, callback: Callable[[], None]) -> None:
        """`callback` wakes this process's worker: called when this process queues a job, and
        (PostgreSQL) when any process does (LISTEN on CHANNEL)."""
        self._wake = callback
        self.db.listen(CHANNEL, callback)

    def wake(self) -> None:
        self._wake()

    def writer(self) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction on the store the outbox lives in (for recording an outcome)."""
        return self.db.writer()

    def append(self, tx: Tx, event: str, *, tenant: str | None, job: Job, **detail: Any) -> None:
        """The audit record of something that happened to a job, in the transaction that records it."""
        self.audit.append(tx, event, actor="sluis", tenant=tenant, delivery=job.delivery_id, **detail)

    def _queued(self, tx: Tx) -> None:
        """A job was written in `tx`: once committed, wake the workers of other processes."""
        tx.notify(CHANNEL)

    # --- KeyHandoff ----------------------------------------------------------------------------
    def enqueue(self, tx: Tx, delivery: Delivery, tenant: Tenant, passphrase: str) -> int:
        self.store.add_secret(tx, delivery.id, self.sealer().seal(passphrase.encode()))
        jobs = [(SMS, phone) for phone in tenant.phones]
        if self.settings.email.enabled and tenant.email:
            jobs.append((EMAIL, tenant.email))
        for kind, target in jobs:
            self._insert(tx, delivery.id, kind, target)
        return len(jobs)

    def revoke(self, tx: Tx, delivery_id: str, reason: str) -> None:
        """Destroy the key and cancel what has not gone out; an attempt in flight (`sending`) is
        left to the worker, which records what the provider answers."""
        tx.lock_audit()   # before any job row: the order `_lock_job` keeps too
        self._destroy_key(tx, delivery_id, f"delivery {reason}")
        self.store.cancel_waiting(tx, delivery_id, f"delivery {reason}", self._now())

    def collected(self, tx: Tx, delivery_id: str) -> None:
        self.destroy_if_done(tx, delivery_id)

    # --- taking jobs: leases ----------------------------------------------------------------------
    def lease_end(self) -> str:
        return iso(self.clock.now() + timedelta(seconds=self.settings.sms.lease))

    def take(self, limit: int = 50) -> list[Job]:
        """Lease to this process the jobs due now (none another live process holds)."""
        for owner in self.store.lease_holders(self.owner):
            if holder_gone(owner, self.owner):
                self.store.drop_leases(owner)
        return self.store.claim_due(self.owner, self._now(), self.lease_end(), limit,
                                    poll_limit=self.settings.sms.poll_limit, redact=self.settings.sms.redact)

    def release(self, jobs: list[Job]) -> None:
        """Give back leases this process took but will not work on now."""
        self.store.release(self.owner, [job.id for job in jobs])

    def _held(self, current: Job | None) -> bool:
        """Whether this process may work the job: it holds the lease, or nobody holds a live one
        (none, expired, or its holder on this host is gone)."""
        if current is None:
            return False
        if current.claimed_by is None or current.claimed_by == self.owner:
            return True
        return current.lease_until is None or current.lease_until <= self._now() or holder_gone(current.claimed_by, self.owner)

    def _lock_job(self, tx: Tx, job_id: int) -> Job | None:
        """The job, its row locked until commit. The audit lock first: a removal holds it when it
        cancels jobs, so taking both in that order everywhere leaves no deadlock (PostgreSQL)."""
        tx.lock_audit()
        return self.store.get(tx, job_id, lock=True)

    def context(self, job: Job) -> tuple[Delivery, str]:
        """The job's delivery and its tenant's name (for the message and the audit record)."""
        delivery = deliveries.by_id(self.db, job.delivery_id)
        if delivery is None:
            raise NotFound(f"no delivery {job.delivery_id!r} for outbox job {job.id}")
        return delivery, tenant_name(self.db, delivery.tenant_id)

    # --- SMS attempts: bound to the tenant's phones, recorded before the provider call ----------
    def phones(self, conn: Tx | Store, tenant_id: int) -> list[str]:
        """The tenant's registered phones now, in order."""
        return tenant_phones(conn, tenant_id)

    def claim(self, job: Job, tenant_id: int, tenant: str) -> Claim | None:
        """Record an SMS attempt (`sending`, attempts+1, the time, a fresh lease) in one
        transaction, or settle the job.

        Returns None, with the job settled and audited, when it must not be sent: it is no longer
        `pending` (revoked meanwhile, or another process took it), the key is gone, or its phone is
        no longer one of the tenant's (cancelled; operator alerted). Phones added to the tenant
        since publishing do not get the key automatically: the operator is alerted once per phone
        and may resend.
        """
        with self.db.writer() as tx:
            current = self._lock_job(tx, job.id)
            if current is None or current.state != PENDING or not self._held(current):
                return None
            job = current
            phones = self.phones(tx, tenant_id)
            self._alert_added_phones(tx, job, tenant, phones)
            if job.target not in phones:
                self._cancel(tx, job, tenant, "phone_removed",
                             f"{job.target} is no longer a registered phone of {tenant} (removed or "
                             "changed after the file was published): the key was not sent to it",
                             alert=True)
                return None
            sealed = self.store.secret(tx, job.delivery_id)
            if sealed is None:  # revoked or destroyed while the job waited
                self._cancel(tx, job, tenant, "key_gone", "key no longer available")
                return None
            attempt = job.attempts + 1
            self.update(tx, job, state=SENDING, attempts=attempt, last_attempt_at=self._now(),
                        claimed_by=self.owner, lease_until=self.lease_end())
            passphrase = self.sealer().open(sealed).decode()
        return Claim(job=job, passphrase=passphrase, attempt=attempt)

    def _cancel(self, tx: Tx, job: Job, tenant: str, why: str, message: str, *, alert: bool = False) -> None:
        self.finish(tx, job, state=CANCELLED, last_error=message)
        self.audit.append(tx, "key.sms.cancelled", actor="sluis", tenant=tenant, delivery=job.delivery_id,
                          phone=job.target, attempts=job.attempts, why=why, reason=message)
        if alert:
            self.alert(tx, job.delivery_id, phone=job.target, reason=message)
        self.destroy_if_done(tx, job.delivery_id)

    def _alert_added_phones(self, tx: Tx, job: Job, tenant: str, phones: list[str]) -> None:
        """Tell the operator (once per delivery and phone) about phones registered since publishing."""
        jobs = self.store.for_delivery(tx, job.delivery_id)
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

    def settle_sent(self, tx: Tx, job: Job) -> JobState:
        """The state a job takes once the provider accepted it: `sent`, unless something settled it."""
        current = self._lock_job(tx, job.id)
        state = current.state if current else CANCELLED
        return SENT if state in (SENDING, PENDING) else state

    def reconcile(self) -> list[tuple[Job, JobState]]:
        """SMS attempts cut short (`sending` whose process stopped or lost its lease; this process's
        own, since its worker never runs this during a call) are retried if
        their delivery still waits (a duplicate SMS is acceptable, a lost one is not), else marked
        `maybe_sent` and the operator alerted. Audited as `key.sms.interrupted` either way. Run
        at startup and on every pass (another process may have died). Returns (job, new state)."""
        settled: list[tuple[Job, JobState]] = []
        for job_id in self.store.sending():
            with self.db.writer() as tx:
                current = self._lock_job(tx, job_id)
                if current is None or current.state != SENDING or not self._held(current):
                    continue
                job = current
                delivery = deliveries.by_id(tx, job.delivery_id)
                has_secret = self.store.secret(tx, job.delivery_id) is not None
                waits = delivery is not None and delivery.state == PUBLISHED and has_secret
                tenant = tenant_name(tx, delivery.tenant_id) if delivery else None
                cut = (f"attempt {job.attempts} (begun {job.last_attempt_at}) was cut short by a stop or crash; "
                       "the provider may have accepted it")
                state: JobState
                if waits:
                    state, message = PENDING, f"{cut}: sending again (a second SMS is possible)"
                    self.finish(tx, job, state=PENDING, next_attempt_at=self._now(), last_error=message)
                else:
                    why = delivery.state if delivery else "gone"
                    state, message = MAYBE_SENT, f"{cut}: not retried, the delivery is {why}"
                    self.finish(tx, job, state=MAYBE_SENT, last_error=message)
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

    def _insert(self, tx: Tx, delivery_id: str, kind: JobKind, target: str, **payload: Any) -> int:
        job_id = self.store.insert(tx, delivery_id, kind, target, payload, self._now())
        self._queued(tx)
        return job_id

    def alert(self, tx: Tx, delivery_id: str, *, to: str | None = None, **details: Any) -> None:
        """Queue an alert for the operator (or `to`): mailed when e-mail is on; always logged and audited."""
        self._insert(tx, delivery_id, ALERT, to or self.settings.email.operator or "-", **details)

    def jobs(self, delivery_id: str | None = None) -> list[Job]:
        return self.store.for_delivery(self.db, delivery_id) if delivery_id else self.store.all()

    def passphrase(self, delivery_id: str) -> str | None:
        sealed = self.store.secret(self.db, delivery_id)
        return self.sealer().open(sealed).decode() if sealed else None

    def sealed_deliveries(self) -> list[str]:
        """Deliveries whose sealed passphrase is still kept (the janitor checks each)."""
        return self.store.sealed_deliveries()

    def update(self, tx: Tx, job: Job, **changes: Any) -> None:
        changes["updated_at"] = self._now()
        self.store.update(tx, job.id, changes)

    def finish(self, tx: Tx, job: Job, **changes: Any) -> bool:
        """Record a job's outcome and give up its lease, if this process still holds it; False
        (nothing written) if the lease ran out and another process took the job over."""
        if not self._held(self._lock_job(tx, job.id)):
            return False
        self.update(tx, job, claimed_by=None, lease_until=None, **changes)
        return True

    def backoff(self, attempts: int, retry_after: float | None, jitter: float) -> str:
        """When to try again after `attempts` failed ones (see backoff_seconds)."""
        wait = backoff_seconds(self.settings.sms, attempts, retry_after, jitter)
        return iso(self.clock.now() + timedelta(seconds=wait))

    def poll_later(self, polls: int) -> str:
        return iso(self.clock.now() + timedelta(seconds=self.settings.sms.poll_interval * 2 ** polls))

    def destroy_if_done(self, tx: Tx, delivery_id: str) -> bool:
        """Destroy the sealed passphrase once no SMS needs it and the delivery is no longer pending."""
        pending = self.store.sms_in_flight(tx, delivery_id)
        delivery = deliveries.by_id(tx, delivery_id)
        if pending or (delivery and delivery.state == PUBLISHED):
            return False
        return self._destroy_key(tx, delivery_id, "collected, no key message waiting")

    def destroy_done_key(self, delivery_id: str) -> bool:
        """`destroy_if_done` in a transaction of its own (the janitor's sweep)."""
        with self.db.writer() as tx:
            return self.destroy_if_done(tx, delivery_id)

    def _destroy_key(self, tx: Tx, delivery_id: str, why: str) -> bool:
        """Delete the sealed passphrase; its destruction gets its own audit record (key.destroy)."""
        if not self.store.delete_secret(tx, delivery_id):
            return False
        tenant, state = self.store.delivery_ending(tx, delivery_id)
        # Recorded in the same transaction: the key is gone only if its record is written.
        self.audit.append(tx, "key.destroy", actor="sluis", tenant=tenant, delivery=delivery_id,
                          state=state, reason=why)
        return True

    # --- operator actions ---------------------------------------------------------------------------
    def resend(self, delivery_id: str, *, actor: str, phone: str | None = None, source: str = "cli") -> list[str]:
        """Send the key again to every phone of the tenant (or one), at most once per interval
        (checked and recorded under the tenant's lock: two operators at once resend once)."""
        found = deliveries.by_id(self.db, delivery_id)
        if found is None:
            raise NotFound(f"no delivery {delivery_id!r}")
        with self.db.writer(tenant=found.tenant_id) as tx:
            delivery = deliveries.by_id(tx, delivery_id)
            if delivery is None:
                raise NotFound(f"no delivery {delivery_id!r}")
            if delivery.state != PUBLISHED or self.store.secret(tx, delivery_id) is None:
                raise InvalidInput(f"delivery {delivery_id} is {delivery.state}: its key was destroyed "
                                   "and cannot be sent again (upload the file again instead)")
            phones = self.phones(tx, delivery.tenant_id)
            if phone is not None:
                if phone not in phones:
                    raise InvalidInput(f"{phone} is not a registered phone of this delivery's tenant "
                                       f"(registered: {', '.join(phones)})")
                phones = [phone]
            since = iso(self.clock.now() - timedelta(seconds=self.settings.sms.resend_interval))
            if self.store.resent_since(tx, delivery_id, since):
                raise Busy(f"the key of {delivery_id} was resent less than "
                           f"{self.settings.sms.resend_interval}s ago; try again later")
            self.store.add_resend(tx, delivery_id, self._now(), actor)
            for target in phones:
                self._insert(tx, delivery_id, SMS, target, resend=True)
            tenant = tenant_name(tx, delivery.tenant_id)
            self.audit.append(tx, "key.resend", actor=actor, tenant=tenant, delivery=delivery_id,
                              source=source, phones=phones)
        self.wake()
        return phones

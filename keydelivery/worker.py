"""The outbox worker inside `serve`: sends due key messages, retries what may pass, raises what
cannot, polls SMS status with bounded effort. Provider calls run in threads, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from ..config.settings import Settings
from ..server.core.clock import parse_iso
from ..server.core.deliveries import fetch
from ..server.core.directory import tenant_name
from .mail import MailServer, send_mail
from .outbox import ALERT, DELIVERED, EMAIL, FAILED, PENDING, SENT, SMS, UNDELIVERED, Job, Outbox
from .providers.base import (
    FAILED_STATUSES, FINAL_STATUSES, PermanentProviderError, SmsProvider, TransientProviderError,
)
from .templates import render_alert, render_email, render_sms

log = logging.getLogger("sluis.keydelivery")
TICK_SECONDS = 1.0
REDACT_DONE, REDACT_GAVE_UP, REDACT_TRIES = 1, 2, 5


def mail_server(settings: Settings) -> MailServer | None:
    email = settings.email
    if not email.enabled:
        return None
    return MailServer(host=email.host, port=email.port, starttls=email.starttls,
                      username=email.username or None, password=email.password or None,
                      sender=email.sender)


class OutboxWorker:
    """Drains the outbox; `run_once` is one pass (tests and `sluis keys flush` use it directly)."""

    def __init__(self, settings: Settings, outbox: Outbox, provider: SmsProvider,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.outbox = outbox
        self.provider = provider
        self.mail = mail_server(settings)
        self.rng = rng or random.SystemRandom()
        self._event = asyncio.Event()

    def wake_threadsafe(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(self._event.set)

    async def run(self) -> None:
        try:
            await asyncio.to_thread(self.reconcile)
        except Exception:
            log.exception("could not settle SMS attempts interrupted by the last stop; they stay 'sending'")
        while True:
            try:
                await asyncio.to_thread(self.run_once)
            except Exception:
                log.exception("outbox pass failed; retrying")
            try:
                await asyncio.wait_for(self._event.wait(), TICK_SECONDS)
            except asyncio.TimeoutError:
                pass
            self._event.clear()

    def run_once(self) -> int:
        """Handle every job due now; returns how many were handled."""
        handled = 0
        for job in self.outbox.due():
            try:
                self._handle(job)
            except Exception:
                log.exception("outbox job %d (%s to %s) failed unexpectedly", job.id, job.kind, job.target)
            handled += 1
        return handled

    def _handle(self, job: Job) -> None:
        if job.state in (DELIVERED, UNDELIVERED):
            self._redact(job)
        elif job.state == SENT:
            self._poll(job)
        elif job.kind == SMS:
            self._send_sms(job)
        elif job.kind == EMAIL:
            self._deliver(job, lambda: self._send_notice(job))
        elif job.kind == ALERT:
            self._deliver(job, lambda: self._send_alert(job))

    # --- SMS ---------------------------------------------------------------------------------------
    def _context(self, job: Job) -> tuple[Any, str]:
        delivery = fetch(self.outbox.db, "id = ?", (job.delivery_id,))[0]
        tenant = tenant_name(self.outbox.db, delivery.tenant_id)
        return delivery, tenant

    def _send_sms(self, job: Job) -> None:
        """Check the phone is still the tenant's, record the attempt (`sending`), then call the
        provider: a crash during the call leaves a `sending` row that `reconcile` settles."""
        delivery, tenant = self._context(job)
        claim = self.outbox.claim(job, delivery.tenant_id, tenant)
        if claim is None:
            return
        job = claim.job
        body = render_sms(self.settings.sms.template, passphrase=claim.passphrase, file=delivery.stored_name,
                          tenant=tenant, expires=parse_iso(delivery.expires_at))
        try:
            result = self.provider.send(job.target, body)
        except TransientProviderError as exc:
            self._retry(job, tenant, exc, claim.attempt)
        except PermanentProviderError as exc:
            self._fail(job, tenant, delivery, f"{exc} (code {exc.code})" if exc.code else str(exc), claim.attempt)
        except Exception as exc:  # a fault outside the provider's error map must not leave it `sending`
            log.exception("SMS to %s: unexpected error from the provider", job.target)
            self._retry(job, tenant, TransientProviderError(f"unexpected error: {exc!r}"[:300]), claim.attempt)
        else:
            with self.outbox.db.writer() as tx:
                # Revocation leaves a `sending` job alone, so even for a delivery replaced or
                # withdrawn meanwhile the job records what the provider accepted.
                self.outbox.update(tx, job, state=self.outbox.settle_sent(tx, job), attempts=claim.attempt,
                                   provider_id=result.provider_id, provider_status=result.status,
                                   last_error=None, next_attempt_at=self.outbox.poll_later(0))
                self.outbox.destroy_if_done(tx, job.delivery_id)
                self.outbox.audit.append(tx, "key.sms.sent", actor="sluis", tenant=tenant,
                                         delivery=job.delivery_id, phone=job.target,
                                         provider=self.provider.name, provider_id=result.provider_id,
                                         attempt=claim.attempt)

    def reconcile(self) -> int:
        """At startup, settle SMS attempts a crash cut short (see Outbox.reconcile); returns how many."""
        settled = self.outbox.reconcile()
        for job, state in settled:
            log.warning("SMS to %s for delivery %s was in flight when the server stopped: %s", job.target,
                        job.delivery_id, "sending again" if state == PENDING else "may have been sent, not retried")
        return len(settled)

    def _retry(self, job: Job, tenant: str, exc: TransientProviderError, attempts: int | None = None) -> None:
        """`attempts`: the attempt already recorded (an SMS claim), else this one counts now."""
        attempts = attempts if attempts is not None else job.attempts + 1
        with self.outbox.db.writer() as tx:
            self.outbox.update(tx, job, state=PENDING, attempts=attempts, last_error=str(exc)[:500],
                               next_attempt_at=self.outbox.backoff(attempts, exc.retry_after, self.rng.random()))
            self.outbox.audit.append(tx, "key.retry", actor="sluis", tenant=tenant, delivery=job.delivery_id,
                                     kind=job.kind, target=job.target, attempt=attempts, error=str(exc)[:200])
            if attempts == self.settings.sms.alert_after and job.kind != ALERT:
                self.outbox.alert(tx, job.delivery_id, phone=job.target,
                                  reason=f"{attempts} attempts failed so far, still retrying: {exc}")
        log.warning("%s to %s failed (attempt %d), retrying: %s", job.kind, job.target, attempts, exc)

    def _fail(self, job: Job, tenant: str, delivery: Any, reason: str, attempts: int | None = None) -> None:
        with self.outbox.db.writer() as tx:
            self.outbox.update(tx, job, state=FAILED, last_error=reason[:500],
                               attempts=attempts if attempts is not None else job.attempts + 1)
            self.outbox.destroy_if_done(tx, job.delivery_id)
            self.outbox.audit.append(tx, "key.failed", actor="sluis", tenant=tenant, delivery=job.delivery_id,
                                     kind=job.kind, target=job.target, reason=reason[:300])
            if job.kind != ALERT:
                self.outbox.alert(tx, job.delivery_id, phone=job.target,
                                  reason=f"{reason} (permanent error: not retried)")
        log.error("%s to %s failed permanently for delivery %s: %s", job.kind, job.target,
                  job.delivery_id, reason)

    def _poll(self, job: Job) -> None:
        assert job.provider_id is not None
        status: str | None   # unknown (None) when the provider cannot be asked and never answered
        error: str | None
        try:
            status = self.provider.fetch_status(job.provider_id)
        except (TransientProviderError, PermanentProviderError) as exc:
            status, error = job.provider_status, str(exc)
        else:
            error = None
        _, tenant = self._context(job)
        with self.outbox.db.writer() as tx:
            if status in FINAL_STATUSES:
                state = UNDELIVERED if status in FAILED_STATUSES else DELIVERED
                self.outbox.update(tx, job, state=state, provider_status=status, polls=job.polls + 1,
                                   # the body is erased one (shortest) backoff interval later
                                   next_attempt_at=self.outbox.backoff(0, None, 0.0))
                self.outbox.audit.append(tx, f"key.sms.{state}", actor="sluis", tenant=tenant,
                                         delivery=job.delivery_id, phone=job.target, status=status)
                if state == UNDELIVERED:
                    self.outbox.alert(tx, job.delivery_id, phone=job.target,
                                      reason=f"the provider reports the SMS as {status} (not retried automatically)")
            else:
                self.outbox.update(tx, job, provider_status=status, polls=job.polls + 1, last_error=error,
                                   next_attempt_at=self.outbox.poll_later(job.polls + 1))

    def _redact(self, job: Job) -> None:
        """Erase the passphrase from the provider's copy of a finished SMS (a few tries at most)."""
        assert job.provider_id is not None
        attempts = job.redact_attempts + 1
        try:
            self.provider.redact(job.provider_id)
            state, error = REDACT_DONE, ""
        except TransientProviderError as exc:
            state, error = (REDACT_GAVE_UP if attempts >= REDACT_TRIES else 0), str(exc)
        except PermanentProviderError as exc:
            state, error = REDACT_GAVE_UP, str(exc)
        _, tenant = self._context(job)
        with self.outbox.db.writer() as tx:
            self.outbox.update(tx, job, redacted=state, redact_attempts=attempts,
                               next_attempt_at=self.outbox.backoff(attempts, None, self.rng.random()))
            if state == REDACT_DONE:
                self.outbox.audit.append(tx, "key.sms.redacted", actor="sluis", tenant=tenant,
                                         delivery=job.delivery_id, phone=job.target, provider_id=job.provider_id)
            elif state == REDACT_GAVE_UP:
                self.outbox.audit.append(tx, "key.sms.redact_failed", actor="sluis", tenant=tenant,
                                         delivery=job.delivery_id, phone=job.target, error=error[:300])
        if state == REDACT_GAVE_UP:
            log.warning("could not erase the SMS body of %s at the provider: %s", job.provider_id, error)

    # --- e-mail --------------------------------------------------------------------------------------
    def _deliver(self, job: Job, send: Any) -> None:
        delivery, tenant = self._context(job)
        try:
            mailed = send()
        except TransientProviderError as exc:
            self._retry(job, tenant, exc)
        except PermanentProviderError as exc:
            self._fail(job, tenant, delivery, str(exc))
        else:
            with self.outbox.db.writer() as tx:
                self.outbox.update(tx, job, state=SENT, attempts=job.attempts + 1, last_error=None)
                event = f"{job.kind}.sent" if mailed else f"{job.kind}.logged"
                self.outbox.audit.append(tx, event, actor="sluis", tenant=tenant,
                                         delivery=job.delivery_id, target=job.target)

    def _send_notice(self, job: Job) -> bool:
        delivery, tenant = self._context(job)
        if self.mail is None:
            raise PermanentProviderError("e-mail is not enabled in [email]")
        host, port = self.settings.server.listen
        subject, body = render_email(file=delivery.stored_name, tenant=tenant,
                                     expires=parse_iso(delivery.expires_at),
                                     host=self.settings.email.public_host or host,
                                     port=self.settings.email.public_port or port)
        send_mail(self.mail, to=[job.target], subject=subject, body=body)
        return True

    def _send_alert(self, job: Job) -> bool:
        """Log the alert; mail it to its target (the operator, or a sender) if e-mail is on. Returns whether mailed."""
        delivery, tenant = self._context(job)
        subject, body = render_alert(file=delivery.stored_name, tenant=tenant,
                                     phone=job.payload.get("phone", "-"),
                                     reason=job.payload.get("reason", "-"),
                                     expires=parse_iso(delivery.expires_at))
        log.error("ALERT for %s: %s", job.target if "@" in job.target else "operator", subject)
        if self.mail is None or "@" not in job.target:
            return False  # logged and audited; there is no address to mail
        send_mail(self.mail, to=[job.target], subject=subject, body=body)
        return True

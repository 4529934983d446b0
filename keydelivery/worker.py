"""The outbox worker inside `serve`: sends due key messages, retries what may pass, raises what
cannot, polls SMS status with bounded effort. Provider calls run in threads, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from ..config.settings import Settings
from ..server.core.clock import parse_iso
from ..server.core.records import Delivery
from .mail import MailServer, send_mail
from .outbox import ALERT, DELIVERED, EMAIL, PENDING, SENT, SMS, UNDELIVERED, Job, Outbox, Redaction
from .outcomes import Outcomes
from .providers.base import (
    FAILED_STATUSES, FINAL_STATUSES, PermanentProviderError, SmsProvider, TransientProviderError,
)
from .templates import render_alert, render_email, render_sms

log = logging.getLogger("sluis.keydelivery")
TICK_SECONDS = 1.0
REDACT_TRIES = 5
BATCH = 20     # jobs taken per pass; the lease is checked before each


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
        self.outcomes = Outcomes(settings, outbox)
        self.provider = provider
        self.mail = mail_server(settings)
        self.rng = rng or random.SystemRandom()
        self._event = asyncio.Event()

    def wake_threadsafe(self, loop: asyncio.AbstractEventLoop) -> None:
        """From any thread (a store's LISTEN thread included): wake the worker; after shutdown, nothing."""
        try:
            loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:   # the loop is closed: the process is stopping
            pass

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.reconcile)
            except Exception:
                log.exception("could not settle SMS attempts interrupted by a stop; they stay 'sending'")
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
        """Handle the jobs due now, taken with a lease; returns how many were handled. Jobs left
        when half the lease has gone are given back for the next pass (or another process)."""
        handled = 0
        jobs = self.outbox.take(BATCH)
        deadline = time.monotonic() + self.settings.sms.lease / 2
        for number, job in enumerate(jobs):
            if time.monotonic() > deadline:
                self.outbox.release(jobs[number:])
                break
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
    def _context(self, job: Job) -> tuple[Delivery, str]:
        return self.outbox.context(job)

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
            self.outcomes.sms_sent(job, tenant, claim.attempt, self.provider.name, result.provider_id, result.status)

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
        self.outcomes.retry(job, tenant, exc, attempts, self.rng.random())
        log.warning("%s to %s failed (attempt %d), retrying: %s", job.kind, job.target, attempts, exc)

    def _fail(self, job: Job, tenant: str, delivery: Any, reason: str, attempts: int | None = None) -> None:
        self.outcomes.failed(job, tenant, reason, attempts if attempts is not None else job.attempts + 1)
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
        self.outcomes.polled(job, tenant, status, error, final=status in FINAL_STATUSES,
                             failed=status in FAILED_STATUSES)

    def _redact(self, job: Job) -> None:
        """Erase the passphrase from the provider's copy of a finished SMS (a few tries at most)."""
        assert job.provider_id is not None
        attempts = job.redact_attempts + 1
        try:
            self.provider.redact(job.provider_id)
            state, error = Redaction.DONE, ""
        except TransientProviderError as exc:
            state, error = (Redaction.GAVE_UP if attempts >= REDACT_TRIES else Redaction.NOT_YET), str(exc)
        except PermanentProviderError as exc:
            state, error = Redaction.GAVE_UP, str(exc)
        _, tenant = self._context(job)
        self.outcomes.redaction(job, tenant, state, attempts, error, self.rng.random())
        if state == Redaction.GAVE_UP:
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
            self.outcomes.mailed(job, tenant, bool(mailed))

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

"""What the worker learned from a provider or the mail server, recorded: each outcome is one
transaction that settles the job (releasing its lease), writes its audit record and, where the
operator must know, queues an alert. Only the process holding a job's lease records its outcome
(`Outbox.finish`); the audit record is written either way, since the call did happen.
"""

from __future__ import annotations

from ..config.settings import Settings
from .outbox import ALERT, DELIVERED, FAILED, PENDING, SENT, UNDELIVERED, Job, Outbox, Redaction
from .providers.base import TransientProviderError


class Outcomes:
    def __init__(self, settings: Settings, outbox: Outbox) -> None:
        self.settings = settings
        self.outbox = outbox

    def sms_sent(self, job: Job, tenant: str, attempt: int, provider: str, provider_id: str,
                 status: str | None) -> None:
        with self.outbox.writer() as tx:
            # Revocation leaves a `sending` job alone, so even for a delivery replaced or
            # withdrawn meanwhile the job records what the provider accepted.
            self.outbox.finish(tx, job, state=self.outbox.settle_sent(tx, job), attempts=attempt,
                               provider_id=provider_id, provider_status=status, last_error=None,
                               next_attempt_at=self.outbox.poll_later(0))
            self.outbox.destroy_if_done(tx, job.delivery_id)
            self.outbox.append(tx, "key.sms.sent", tenant=tenant, job=job, phone=job.target, provider=provider,
                               provider_id=provider_id, attempt=attempt)

    def retry(self, job: Job, tenant: str, exc: TransientProviderError, attempts: int, jitter: float) -> None:
        with self.outbox.writer() as tx:
            self.outbox.finish(tx, job, state=PENDING, attempts=attempts, last_error=str(exc)[:500],
                               next_attempt_at=self.outbox.backoff(attempts, exc.retry_after, jitter))
            self.outbox.append(tx, "key.retry", tenant=tenant, job=job, kind=job.kind, target=job.target,
                               attempt=attempts, error=str(exc)[:200])
            if attempts == self.settings.sms.alert_after and job.kind != ALERT:
                self.outbox.alert(tx, job.delivery_id, phone=job.target,
                                  reason=f"{attempts} attempts failed so far, still retrying: {exc}")

    def failed(self, job: Job, tenant: str, reason: str, attempts: int) -> None:
        with self.outbox.writer() as tx:
            self.outbox.finish(tx, job, state=FAILED, last_error=reason[:500], attempts=attempts)
            self.outbox.destroy_if_done(tx, job.delivery_id)
            self.outbox.append(tx, "key.failed", tenant=tenant, job=job, kind=job.kind, target=job.target,
                               reason=reason[:300])
            if job.kind != ALERT:
                self.outbox.alert(tx, job.delivery_id, phone=job.target,
                                  reason=f"{reason} (permanent error: not retried)")

    def polled(self, job: Job, tenant: str, status: str | None, error: str | None, final: bool,
               failed: bool) -> None:
        with self.outbox.writer() as tx:
            if final:
                state = UNDELIVERED if failed else DELIVERED
                self.outbox.finish(tx, job, state=state, provider_status=status, polls=job.polls + 1,
                                   # the body is erased one (shortest) backoff interval later
                                   next_attempt_at=self.outbox.backoff(0, None, 0.0))
                self.outbox.append(tx, f"key.sms.{state}", tenant=tenant, job=job, phone=job.target, status=status)
                if state == UNDELIVERED:
                    self.outbox.alert(tx, job.delivery_id, phone=job.target,
                                      reason=f"the provider reports the SMS as {status} (not retried automatically)")
            else:
                self.outbox.finish(tx, job, provider_status=status, polls=job.polls + 1, last_error=error,
                                   next_attempt_at=self.outbox.poll_later(job.polls + 1))

    def redaction(self, job: Job, tenant: str, state: Redaction, attempts: int, error: str, jitter: float) -> None:
        with self.outbox.writer() as tx:
            self.outbox.finish(tx, job, redacted=state, redact_attempts=attempts,
                               next_attempt_at=self.outbox.backoff(attempts, None, jitter))
            if state == Redaction.DONE:
                self.outbox.append(tx, "key.sms.redacted", tenant=tenant, job=job, phone=job.target,
                                   provider_id=job.provider_id)
            elif state == Redaction.GAVE_UP:
                self.outbox.append(tx, "key.sms.redact_failed", tenant=tenant, job=job, phone=job.target,
                                   error=error[:300])

    def mailed(self, job: Job, tenant: str, mailed: bool) -> None:
        """An e-mail or alert went out (or, with no address or e-mail off, was only logged)."""
        with self.outbox.writer() as tx:
            self.outbox.finish(tx, job, state=SENT, attempts=job.attempts + 1, last_error=None)
            event = f"{job.kind}.sent" if mailed else f"{job.kind}.logged"
            self.outbox.append(tx, event, tenant=tenant, job=job, target=job.target)

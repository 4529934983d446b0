"""Sends the notification queue (incident alerts, DPO notices) inside `serve`: e-mail through
[email], SMS through the key-delivery provider. Temporary failures are retried with the [sms]
backoff for as long as it takes; a permanent refusal is recorded and logged as an error.
Blocking: `run_once` runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
import random

from ..config.settings import Settings
from ..server.core.notifications import EMAIL, Notification, NotificationQueue
from .mail import MailServer, send_mail
from .outbox import backoff_seconds
from .providers.base import PermanentProviderError, SmsProvider, TransientProviderError

log = logging.getLogger("sluis.notify")


class NotificationSender:
    def __init__(self, settings: Settings, queue: NotificationQueue, provider: SmsProvider,
                 mail: MailServer | None, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.queue = queue
        self.provider = provider
        self.mail = mail
        self.rng = rng or random.SystemRandom()

    def run_once(self) -> int:
        """Try every message that is due; returns how many were sent. Nothing while another
        process's sender is in a pass (one sender at a time: no message goes twice)."""
        with self.queue.exclusive() as held:
            return self._pass() if held else 0

    def _pass(self) -> int:
        sent = 0
        for note in self.queue.due():
            try:
                sent += self._send(note)
            except Exception:  # one bad message must not stop the others
                log.exception("notification %d (%s, %s) failed unexpectedly", note.id, note.channel, note.topic)
        return sent

    def _send(self, note: Notification) -> int:
        try:
            if note.channel == EMAIL:
                if self.mail is None:
                    raise TransientProviderError("e-mail is off ([email] enabled = false)")
                send_mail(self.mail, to=[note.target], subject=note.subject, body=note.body)
                provider_id = None
            else:
                provider_id = self.provider.send(note.target, note.body).provider_id
        except TransientProviderError as exc:
            wait = self._backoff(note.attempts + 1, exc.retry_after)
            log.warning("%s for %s to %s failed (attempt %d), retrying in %.0fs: %s", note.channel, note.topic,
                        note.target, note.attempts + 1, wait, exc)
            self.queue.retry(note, str(exc), wait)
            return 0
        except PermanentProviderError as exc:
            log.error("%s for %s to %s refused for good: %s", note.channel, note.topic, note.target, exc)
            self.queue.mark_failed(note, str(exc))
            return 0
        self.queue.mark_sent(note, provider_id)
        log.info("%s for %s sent to %s", note.channel, note.topic, note.target)
        return 1

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        return backoff_seconds(self.settings.sms, attempts, retry_after, self.rng.random())

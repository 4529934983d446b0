"""The interface every SMS provider implements, and the errors that tell the worker what to do.

The split that matters to the outbox worker is transient (try again later, maybe after
`retry_after` seconds) versus permanent (trying again cannot help: alert an operator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# Statuses after which a message will not change any more (Twilio's vocabulary, which the other
# providers map onto). "read" only occurs on channels with read receipts, "canceled" for
# scheduled messages that were called off.
FINAL_STATUSES = frozenset({"delivered", "undelivered", "failed", "canceled", "read"})
# Of those, the ones that mean the passphrase did not reach the phone.
FAILED_STATUSES = frozenset({"undelivered", "failed", "canceled"})


@dataclass(frozen=True)
class SendResult:
    """What the provider said when it accepted a message: its id and its first status."""

    provider_id: str
    status: str  # e.g. "queued", "sent", "accepted"


class ProviderError(Exception):
    """Sending or polling a message failed."""


class TransientProviderError(ProviderError):
    """A failure that may pass: 429, 5xx, network errors, timeouts. Retry later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds the provider asked us to wait, if it said


class PermanentProviderError(ProviderError):
    """A failure that retrying cannot fix: bad number, unsubscribed, bad credentials, other 4xx."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code  # provider's error code, e.g. Twilio 21211 (invalid 'To' number)


@runtime_checkable
class SmsProvider(Protocol):
    """Sends an SMS and reports its status; blocking, so call it from a worker thread."""

    name: str

    def send(self, to: str, body: str) -> SendResult:
        """Hand `body` to the provider for delivery to E.164 number `to`."""
        ...

    def fetch_status(self, provider_id: str) -> str:
        """Return the provider's current status string for a message sent earlier."""
        ...

    def redact(self, provider_id: str) -> None:
        """Erase the body (the passphrase) from the provider's copy of a finished message."""
        ...

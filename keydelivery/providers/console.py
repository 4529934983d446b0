"""An SMS "provider" that prints messages instead of sending them: for the demo and development."""

from __future__ import annotations

import itertools
import sys
import threading
from typing import TextIO

from sluis.keydelivery.providers.base import SendResult


class ConsoleProvider:
    """Writes each message (recipient and body) to a stream; never use it in production."""

    name = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        # Resolve sys.stderr at call time, not import time, so pytest's capture (which swaps
        # sys.stderr) and daemon redirections see the output.
        self._stream = stream if stream is not None else sys.stderr
        self._counter = itertools.count(1)
        self._lock = threading.Lock()  # several worker threads may send at once

    def send(self, to: str, body: str) -> SendResult:
        """Print the message and return an id like `console-1`."""
        with self._lock:
            provider_id = f"console-{next(self._counter)}"
            self._stream.write(f"[sms {provider_id}] to {to}: {body}\n")
            self._stream.flush()
        return SendResult(provider_id=provider_id, status="sent")

    def fetch_status(self, provider_id: str) -> str:
        """A printed message counts as delivered."""
        return "delivered"

    def redact(self, provider_id: str) -> None:
        """Nothing is kept anywhere but the log this printed to."""

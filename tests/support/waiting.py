"""The one bounded wait the tests use: poll a check until it gives something truthy."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(check: Callable[[], Any], what: str = "condition", timeout: float = 10,
               interval: float = 0.05, context: Callable[[], str] = lambda: "") -> Any:
    """Return the first truthy value of `check()`; fail naming `what` (and `context()`) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{context()}")
        time.sleep(interval)

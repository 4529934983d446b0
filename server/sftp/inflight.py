"""What must end before the database closes: each live connection, each SFTP session's cleanup
(uploads aborted and audited, downloads closed) and each audit write sent to a thread from a
synchronous callback. Nothing is fire-and-forget: everything is tracked here until it is done,
and `sluis serve` waits for all of it, bounded, at shutdown (server/service.py).

Only the event loop calls it. It holds live work only, so it is bounded by the connection and
channel caps and by the throttled pre-authentication records.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

log = logging.getLogger("sluis.inflight")


class InFlight:
    def __init__(self) -> None:
        self._pending: set[asyncio.Future[Any]] = set()
        self._connections: dict[object, asyncio.Future[None]] = {}

    @property
    def pending(self) -> int:
        """Connections, session cleanups and background writes not yet done."""
        return len(self._pending)

    def track(self, future: asyncio.Future[Any], label: str, *, report: bool = True) -> None:
        """Hold `future` until it is done; a failure is logged under `label` unless `report` is
        off (when its creator reports it already)."""
        self._pending.add(future)
        future.add_done_callback(lambda done: self._done(done, label if report else None))

    def write_soon(self, label: str, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Run a blocking write (an audit record, a ban) in a thread, tracked: for synchronous
        callbacks on the event loop, which cannot await it. `label` names it if it fails."""
        self.track(asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs)), label)

    def opened(self, connection: object) -> None:
        """A connection is live: shutdown waits for its `closed` (and what that sets off)."""
        if connection not in self._connections:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._connections[connection] = future
            self.track(future, "connection")

    def closed(self, connection: object) -> None:
        future = self._connections.pop(connection, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _done(self, future: asyncio.Future[Any], label: str | None) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None and label is not None:
            log.error("%s failed", label, exc_info=future.exception())

    async def settle(self, timeout: float) -> int:
        """Wait until nothing is pending, at most `timeout` seconds; what is done meanwhile may
        start more (a session's cleanup writes records), which is waited for too. Returns how
        many are still pending (0: all done)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending:
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.wait(set(self._pending), timeout=left, return_when=asyncio.FIRST_COMPLETED)
        return len(self._pending)

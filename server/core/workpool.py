"""A small thread pool with a bounded queue, for slow work that clients can trigger at will
(argon2id password checks): it has threads of its own, so it never delays other logins, and
work beyond the queue bound is refused at once instead of piling up."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class PoolBusy(Exception):
    """Every thread is busy and the queue is full."""


class BoundedPool:
    def __init__(self, name: str, threads: int, queue: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._limit = threads + queue
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, func: Callable[..., T], *args: object) -> T:
        """Run `func(*args)` on the pool; raises PoolBusy at once when the queue is full."""
        with self._lock:
            if self._pending >= self._limit:
                raise PoolBusy()
            self._pending += 1
        try:
            future = self._executor.submit(func, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

"""The reorder window: SFTP writes in any order in, one in-order plaintext stream out.

Writes that arrive in order go straight through. Writes ahead of the stream wait in memory,
bounded per upload, per sender and across all uploads (`MemoryBudget`). A write that would need more than
that, or one behind what is already sealed, fails with a clear message: plaintext is never
spilled to disk to make room.
"""

from __future__ import annotations

import threading
from typing import Callable

from ..errors import Busy, LimitReached, UploadRejected


class MemoryBudget:
    """A byte budget: the process's, shared by all uploads, or one sender's share of its parent
    (`limit_name` set), so that one sender cannot take all of it from the others."""

    def __init__(self, limit: int, parent: MemoryBudget | None = None, *, limit_name: str = "") -> None:
        self.limit = limit
        self.used = 0
        self.parent = parent
        self.limit_name = limit_name
        self._lock = threading.Lock()

    def take(self, size: int) -> None:
        """Take `size` bytes, or raise Busy (the process's budget) / LimitReached (a share)."""
        with self._lock:
            if self.used + size > self.limit:
                if self.limit_name:
                    raise LimitReached(
                        f"your uploads already hold {self.used} bytes of out-of-order writes, at most "
                        f"{self.limit} ([upload] {self.limit_name}); write in order, or retry once an "
                        "upload has caught up", limit=self.limit_name, value=self.used + size, allowed=self.limit)
                raise Busy("the server's memory for out-of-order writes is exhausted; retry later")
            if self.parent is not None:
                self.parent.take(size)
            self.used += size

    def give(self, size: int) -> None:
        with self._lock:
            self.used -= size
            if self.parent is not None:
                self.parent.give(size)


class ReorderWindow:
    """Feeds `sink` the bytes of the upload strictly in order; holds early writes meanwhile."""

    def __init__(self, sink: Callable[[bytes | memoryview], None], *, window: int, budget: MemoryBudget,
                 max_size: int) -> None:
        self._sink = sink
        self._window = window
        self._budget = budget
        self._max_size = max_size
        self._pending: dict[int, bytes | memoryview] = {}
        self._held = 0
        self.position = 0  # bytes handed to the sink so far

    @property
    def held(self) -> int:
        return self._held

    def write(self, offset: int, data: bytes | memoryview) -> None:
        end = offset + len(data)
        if end > self._max_size:
            raise UploadRejected(f"file is larger than the {self._max_size}-byte limit")
        if not data:
            return
        if offset < self.position:
            raise UploadRejected(
                f"write at offset {offset} is behind data already encrypted (up to {self.position}); "
                "sluis accepts each byte once")
        if offset > self.position:
            self._hold(offset, data)
            return
        self._sink(data)
        self.position = end
        self._drain()

    def _hold(self, offset: int, data: bytes | memoryview) -> None:
        previous = self._pending.get(offset)
        extra = len(data) - (len(previous) if previous else 0)
        # Bound the distance, not only what is held: a write this far ahead means the client
        # has more than a window of data in flight, and holding it could grow without limit.
        if offset + len(data) - self.position > self._window:
            raise UploadRejected(
                f"write at offset {offset} is {offset - self.position} bytes ahead of the stream; "
                f"at most {self._window} bytes may wait out of order")
        if extra > 0:
            self._budget.take(extra)
        if extra < 0:
            self._budget.give(-extra)
        self._pending[offset] = data
        self._held += extra

    def _drain(self) -> None:
        while self._pending:
            start = min(self._pending)
            if start > self.position:
                return
            data = self._pending.pop(start)
            self._release(len(data))
            skip = self.position - start
            if skip < len(data):
                self._sink(data[skip:])
                self.position = start + len(data)

    def _release(self, size: int) -> None:
        self._held -= size
        self._budget.give(size)

    def finish(self) -> int:
        """Check the stream is complete (no gaps); returns its length."""
        if self._pending:
            gap = self.position
            self.discard()
            raise UploadRejected(f"upload has a gap: no data was written at offset {gap}")
        return self.position

    def discard(self) -> None:
        """Drop every held write and give its memory back."""
        for data in self._pending.values():
            self._release(len(data))
        self._pending.clear()

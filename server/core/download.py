"""An open recipient handle on one delivery: reads from storage, recorded in the coverage that
decides collection, refused once the delivery is withdrawn, replaced or removed."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Container

from ..errors import NotFound
from .coverage import Coverage
from .records import Delivery
from .storage import BlobReader


class Download:
    """An open recipient handle on one delivery; reads are recorded in the session's coverage.

    A handle opened before its delivery was withdrawn, replaced or removed reads no more: this
    process marks it in `revoked` when it removes one, and a removal by another process (the
    janitor, an operator's command, another node) deletes the blob, which the open reader notices
    (local: one fstat; S3: its read-ahead thread looks every second; no database query per read)."""

    def __init__(self, delivery: Delivery, reader: BlobReader, coverage: Coverage,
                 revoked: Container[str] = frozenset()) -> None:
        self.delivery = delivery
        self.reader = reader
        self.coverage = coverage
        self.revoked = revoked
        self.sent = 0

    def read(self, offset: int, size: int) -> bytes | Awaitable[bytes]:
        """The bytes, at once if the storage has them at hand; else, on an event loop, an awaitable
        that the storage resolves when they arrive (an object store's stream: no thread waits and
        the loop never does)."""
        self._check_live()
        data = self.reader.read_now(offset, size)
        if data is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:   # no loop here (the library, a thread): wait right here
                return self._sent(offset, self.reader.read_at(offset, size))
            return self._read_later(offset, size)
        return self._sent(offset, data)

    async def _read_later(self, offset: int, size: int) -> bytes:
        data = await self.reader.read_async(offset, size)
        self._check_live()
        return self._sent(offset, data)

    def _check_live(self) -> None:
        if self.delivery.id in self.revoked or self.reader.removed():
            raise NotFound(f"{self.delivery.stored_name} was withdrawn, replaced or removed after it was "
                           "opened; list the folder again")

    def _sent(self, offset: int, data: bytes) -> bytes:
        self.coverage.add(offset, offset + len(data))
        self.sent += len(data)
        return data

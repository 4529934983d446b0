"""Reading a blob from an S3-compatible bucket: one streaming GET, read ahead in a thread into a
bounded buffer, so an SFTP download costs one request, not one ranged GET per READ (70-96 ms each
on moto). Reads already buffered are answered at once (`read_now`, on the event loop); others
wait in a thread (`read_at`). A seek outside the buffer restarts the GET there (If-Match the
object's ETag). The reader thread also looks, once a second, whether the object still exists:
a removal by another process or node stops the download (`removed`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

from ..errors import NotFound, StorageUnavailable

log = logging.getLogger("sluis.storage")

READ_CHUNK = 256 << 10     # bytes one read of the GET stream takes
READ_AHEAD = 4 << 20       # read ahead of the furthest byte asked for
READ_BEHIND = 1 << 20      # kept behind the furthest byte returned, for reads a little out of order
REMOVED_CHECK = 1.0        # seconds between checks that an open blob still exists
STREAM_RETRIES = 3         # a GET cut mid-stream is restarted where it stopped, this often in a row


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def missing(exc: BaseException) -> bool:
    return error_code(exc) in ("NoSuchKey", "NoSuchUpload", "404", "NotFound")


def unavailable(what: str, exc: BaseException) -> StorageUnavailable:
    log.warning("object store: %s failed: %s", what, exc)
    return StorageUnavailable(f"the file store is unavailable ({what} failed); try again later")


class S3Reader:
    """One streaming GET of a blob, read ahead in its own thread into a bounded buffer."""

    def __init__(self, client: Any, bucket: str, object_key: str,
                 on_end: Callable[[], None] = lambda: None) -> None:
        self._client = client
        self._bucket = bucket
        self._object = object_key
        try:
            response = client.get_object(Bucket=bucket, Key=object_key)
        except Exception as exc:
            if missing(exc):
                raise NotFound("the file is no longer stored") from None
            raise unavailable("opening the file", exc) from exc
        self.size: int = response["ContentLength"]
        self._etag: str = response["ETag"]
        self._body: Any = response["Body"]
        self.gets = 1                   # GET requests made (tests: one per stream, not per read)
        self._cond = threading.Condition()
        self._base = 0                  # offset of _buf[0]
        self._buf = bytearray()
        self._eof = self.size == 0
        self._demand = 0                # furthest byte asked for: read ahead of it
        self._served = 0                # furthest byte returned: keep READ_BEHIND behind it
        self._seek: int | None = None   # a restart the reader thread is asked to make
        self._error: BaseException | None = None
        self._removed = False
        self._closed = False
        self._checked = time.monotonic()
        self._retries = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._on_end = on_end           # called once, when the reader thread ends (its slot frees)
        threading.Thread(target=self._run, name="sluis-s3-read", daemon=True).start()

    # --- the request side ------------------------------------------------------------------
    def read_now(self, offset: int, size: int) -> bytes | None:
        """The bytes, if they are buffered already (never waits: callable on the event loop)."""
        with self._cond:
            return self._take(offset, size)

    def read_at(self, offset: int, size: int) -> bytes:
        """The bytes, waiting for the stream (or restarting it at `offset`: a seek)."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                data = self._ask(offset, size)
                if data is not None:
                    return data
                self._cond.wait(REMOVED_CHECK)

    async def read_async(self, offset: int, size: int) -> bytes:
        """The bytes, awaited on the event loop: the reader thread resolves a future when the
        stream has moved on, so no thread waits (the loop's default pool is small and shared)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._error is not None:
                    raise self._error
                data = self._ask(offset, size)
                if data is not None:
                    return data
                waiter = loop.create_future()
                self._waiters.append((loop, waiter))
            await asyncio.wait((waiter,), timeout=REMOVED_CHECK)

    def removed(self) -> bool:
        return self._removed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._buf = bytearray()
            self._cond.notify_all()

    def _ask(self, offset: int, size: int) -> bytes | None:   # under _cond
        """The bytes if buffered; else ask the reader thread for them (a seek if they are not
        just ahead) and return None."""
        if self._closed:
            raise ValueError("read from a closed reader")
        data = self._take(offset, size)
        if data is None:
            if self._seek is None and (offset < self._base or offset > self._end + READ_AHEAD):
                self._seek = offset
            self._demand = max(self._demand, min(offset + size, self.size))
            self._cond.notify_all()
        return data

    @property
    def _end(self) -> int:
        return self._base + len(self._buf)

    def _take(self, offset: int, size: int) -> bytes | None:   # under _cond
        if offset >= self.size:
            return b""
        end = min(offset + size, self.size)
        if self._seek is not None or not (self._base <= offset and end <= self._end):
            return None
        with memoryview(self._buf) as view:     # one copy, not a slice and then a copy
            data = bytes(view[offset - self._base:end - self._base])
        self._served = max(self._served, end)
        if end > self._demand:
            self._demand = end
            self._cond.notify_all()     # room ahead: the reader thread may read on
        return data

    # --- the reader thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:   # kept for the next read: never lost
            with self._cond:
                self._error = exc if isinstance(exc, (NotFound, StorageUnavailable)) else \
                    unavailable("reading the file", exc)
                self._wake()
        finally:
            try:
                self._body.close()
            finally:
                self._on_end()

    def _full(self) -> bool:   # under _cond
        return self._eof or self._end >= self._demand + READ_AHEAD

    def _step(self) -> bool:
        """Read one chunk ahead (or restart the GET, or look whether the blob still exists)."""
        with self._cond:
            while not self._closed and self._seek is None and self._full():
                self._cond.wait(REMOVED_CHECK)
                if time.monotonic() - self._checked >= REMOVED_CHECK:
                    break
            if self._closed:
                return False
            seek, self._seek = self._seek, None
        if time.monotonic() - self._checked >= REMOVED_CHECK:
            self._check_removed()
        if seek is not None:
            self._restart(seek)
        with self._cond:
            if self._closed or self._seek is not None or self._full():
                return not self._closed
            body = self._body
        try:
            chunk = body.read(READ_CHUNK)
            if not chunk and self._end < self.size:
                raise ConnectionError("the GET ended before the end of the object")
        except Exception:
            if self._closed or self._retries >= STREAM_RETRIES:
                raise
            self._retries += 1      # a connection cut mid-stream: go on from where it stopped
            with self._cond:
                if self._seek is None:
                    self._seek = self._end
            return True
        with self._cond:
            if self._seek is not None or self._closed:
                return not self._closed    # a seek came meanwhile: this chunk is stale
            if chunk:
                self._buf += chunk
                self._retries = 0
            if self._end >= self.size:
                self._eof = True
            behind = min(self._served - READ_BEHIND - self._base, len(self._buf))
            if behind > 0:
                del self._buf[:behind]
                self._base += behind
            self._wake()
        return True

    def _wake(self) -> None:   # under _cond, in the reader thread: the stream moved on
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, waiter)
            except RuntimeError:   # that loop has closed: nobody waits any more
                pass

    def _restart(self, offset: int) -> Any:
        """A new GET from `offset` (of the same object: If-Match its ETag)."""
        self._body.close()
        try:
            response = self._client.get_object(
                Bucket=self._bucket, Key=self._object, Range=f"bytes={offset}-", IfMatch=self._etag)
        except Exception as exc:
            if missing(exc) or error_code(exc) == "PreconditionFailed":
                self._removed = True
                raise NotFound("the file is no longer stored") from None
            raise
        with self._cond:
            self.gets += 1
            self._body = response["Body"]
            self._base, self._buf, self._eof = offset, bytearray(), offset >= self.size
            self._demand = self._served = offset
            return self._body

    def _check_removed(self) -> None:
        self._checked = time.monotonic()
        try:
            self._client.head_object(Bucket=self._bucket, Key=self._object, IfMatch=self._etag)
        except Exception as exc:
            if missing(exc) or error_code(exc) in ("PreconditionFailed", "412"):
                self._removed = True
            # any other failure: the stream itself will say whether the store answers


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

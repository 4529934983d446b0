"""The at-rest pipeline of one upload: in-order plaintext from the event loop, worked off in order
by a worker thread (first the key derivation, then hashing and encryption), in batches.

The event loop only appends the bytes of each write to a batch (no copy, no crypto); once a batch
holds BATCH bytes it is queued for the upload, and one thread of `AtRestWorkers` empties that
queue in order. So the SSH transport (on the loop) and the at-rest work (in a worker; hashlib and
cryptography release the GIL on large buffers) run on two cores at once.

An upload's work on a batch has two independent parts: `feed` (encryption, the stored file's
SHA-256, the disk write) and `beside` (the plaintext's SHA-256). The worker hands `beside` the
batch in a second pool and feeds the same batch meanwhile, then waits for both before the next
batch: each hook still sees every byte once and in order. Issue 12 measured the single worker
as what an upload from OpenSSH's sftp waited for (busy 520 of 650 ms of a 256 MiB upload, the
event loop waiting for `room` the rest); with the hash beside it, 400 ms.

Memory: one upload queues at most PER_UPLOAD bytes beyond its worker, all uploads together at
most [upload] atrest_memory (each may finish the write it is in: one batch more). A write past
either waits, it is not refused: the SFTP session reads its next request only once the write is
answered, so the client is slowed by the SSH window. A worker's error (disk full, a refused
write, a failed key derivation) is kept and raised by the next `put` and by `drain`: it is never
lost, and a CLOSE after it cannot succeed.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Iterator, Sequence

BATCH = 1 << 20             # bytes handed to the worker at a time (the last batch may be shorter)
PER_UPLOAD = BATCH          # queued for one upload's worker before its writes wait
# How a batch reaches `feed` (`_pieces`): a write of at least JOIN_BELOW bytes as it came, a view
# of its SFTP message (OpenSSH's sftp writes 255 KiB: no copy at all); runs of smaller writes
# (PuTTY's 4 KiB) joined into pieces of JOIN_UP_TO bytes, so `feed` runs a few times per batch,
# not once per write, and no piece costs more than 256 KiB of memory.
JOIN_BELOW = 64 * 1024
JOIN_UP_TO = 256 * 1024
BESIDE_FROM = 64 * 1024     # a smaller batch (a small file, the last one) runs `beside` in the worker itself
THREADS = max(1, min(4, os.cpu_count() or 1))


class AtRestWorkers:
    """The process's at-rest threads and the byte count all uploads have queued for them."""

    def __init__(self, total: int, threads: int = THREADS) -> None:
        self.total = total
        self._queued = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sluis-atrest")
        # Each worker waits for at most one job of this pool and its jobs wait for nothing, so it
        # has as many threads as the workers and a worker never waits behind another upload.
        self._beside = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sluis-beside")
        self._blocked: set[Pipeline] = set()   # pipelines waiting for the total (event loop only)

    @property
    def queued(self) -> int:
        return self._queued

    def pipeline(self, start: Callable[[], None], feed: Callable[[bytes | memoryview], None],
                 beside: Callable[[bytes | memoryview], None] | None = None) -> Pipeline:
        return Pipeline(self, start, feed, beside)

    def _count(self, size: int) -> None:
        with self._lock:
            self._queued += size

    def _wake_blocked(self) -> None:
        """A batch finished (on the loop): pipelines waiting for the total may go on."""
        if self._queued <= self.total:
            for pipeline in list(self._blocked):
                pipeline._progress.set()


class Pipeline:
    """One upload's plaintext, from the event loop (`put`, `room`, `drain`) to `feed` in a worker.

    `start` runs in the worker before the first batch (it derives the upload's key), so the OPEN
    that created the upload answers without waiting for it; `key_ready` resolves when it is done.
    `beside`, if given, sees the same bytes as `feed`, in order, at the same time in another
    thread: it must not depend on `feed`. Used without `begin` (no event loop: the library, the
    CLI), `put` does the work at once.
    """

    def __init__(self, workers: AtRestWorkers, start: Callable[[], None], feed: Callable[[bytes | memoryview], None],
                 beside: Callable[[bytes | memoryview], None] | None = None) -> None:
        self._workers = workers
        self._start: Callable[[], None] | None = start
        self._feed = feed
        self._beside = beside
        self._lock = threading.Lock()
        self._parts: list[bytes | memoryview] = []   # the batch being filled (event loop)
        self._parts_size = 0
        self._queue: deque[list[bytes | memoryview]] = deque()
        self._queued = 0                  # bytes queued or being fed (guarded by _lock)
        self._running = False             # a worker job is scheduled or running
        self._idle = threading.Event()
        self._idle.set()
        self._cancelled = False
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress = asyncio.Event()
        self.key_ready: asyncio.Future[None] | None = None

    @property
    def queued(self) -> int:
        """Bytes accepted but not yet hashed and encrypted (the filling batch included)."""
        return self._queued + self._parts_size

    # --- event loop side ------------------------------------------------------------------
    def begin(self) -> asyncio.Future[None]:
        """Start the worker on `start` (key derivation); returns the future that says it ended."""
        self._loop = asyncio.get_running_loop()
        self.key_ready = self._loop.create_future()
        with self._lock:
            self._schedule()
        return self.key_ready

    def put(self, data: bytes | memoryview) -> None:
        """Take the next in-order bytes (kept by reference); raise the worker's error, if any."""
        self.check()
        if self._loop is None:   # not begun on an event loop (the library, the CLI): work here
            self._inline(data)
            return
        self._parts.append(data)
        self._parts_size += len(data)
        if self._parts_size >= BATCH:
            self._submit()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def _over(self) -> bool:
        return not self._cancelled and (
            self._queued > PER_UPLOAD or (self._workers.queued > self._workers.total and self._queued > 0))

    @property
    def must_wait(self) -> bool:
        """The next write must await `room` first (too much queued, or the worker failed). Most
        writes need not: checked here, they skip a coroutine per write."""
        return self.error is not None or self._over()

    async def room(self) -> None:
        """Wait while this upload, or all uploads together, have more queued than allowed; raise
        the worker's error, if any."""
        while self.error is None and self._over():
            self._progress.clear()
            self._workers._blocked.add(self)
            try:
                await self._progress.wait()
            finally:
                self._workers._blocked.discard(self)
        self.check()   # the worker failed while this write waited: it fails too

    async def drain(self) -> None:
        """Hand over the last, short batch and wait until the worker has fed everything."""
        self.check()
        if self._parts:
            self._submit()
        while True:
            with self._lock:
                done = not self._running and not self._queue
            if done or self.error is not None:
                break
            self._progress.clear()
            await self._progress.wait()
        self.check()

    def _submit(self) -> None:
        parts, size = self._parts, self._parts_size
        self._parts, self._parts_size = [], 0
        self._workers._count(size)
        with self._lock:
            self._queue.append(parts)
            self._queued += size
            if not self._running and self._loop is not None:
                self._schedule()

    def _schedule(self) -> None:   # under _lock
        self._running = True
        self._idle.clear()
        self._workers._executor.submit(self._work)

    def _inline(self, data: bytes | memoryview) -> None:
        start, self._start = self._start, None
        if start is not None:
            start()
        if self._beside is not None:
            self._beside(data)
        self._feed(data)

    # --- any thread -----------------------------------------------------------------------
    def drained(self) -> bool:
        with self._lock:
            return not self._running and not self._queue and not self._parts and self.error is None

    def cancel(self) -> None:
        """Stop: drop what is queued and wait for the batch in hand (blocks; not on the loop)."""
        with self._lock:
            self._cancelled = True
            dropped = sum(len(p) for parts in self._queue for p in parts)
            self._queue.clear()
            self._queued -= dropped
            self._parts, self._parts_size = [], 0
        self._workers._count(-dropped)
        self._idle.wait()
        self._notify()

    # --- worker side ----------------------------------------------------------------------
    def _work(self) -> None:
        try:
            start, self._start = self._start, None
            if start is not None:
                try:
                    if not self._cancelled:
                        start()
                finally:
                    self._call_soon(self._key_done)
            while True:
                with self._lock:
                    if self._cancelled or not self._queue:
                        self._running = False
                        self._idle.set()
                        break
                    parts = self._queue.popleft()
                size = sum(len(p) for p in parts)
                try:
                    self._feed_batch(list(_pieces(parts)), size)
                finally:
                    with self._lock:
                        self._queued -= size
                    self._workers._count(-size)
                self._notify()
            self._notify()   # idle: drain() may be waiting for exactly this
        except BaseException as exc:  # kept for the next write or the close, never lost
            with self._lock:
                self.error = exc
                dropped = sum(len(p) for parts in self._queue for p in parts)
                self._queue.clear()
                self._queued -= dropped
                self._running = False
                self._idle.set()
            self._workers._count(-dropped)
            self._notify()

    def _feed_batch(self, pieces: list[bytes | memoryview], size: int) -> None:
        """One batch through `feed` here and through `beside` in the second pool at the same time;
        returns when both are done (the next batch must follow both; the pieces must outlive the
        job). An error of `feed` wins over one of `beside`."""
        beside = self._beside
        if beside is None or size < BESIDE_FROM:
            for piece in pieces:
                if beside is not None:
                    beside(piece)
                self._feed(piece)
            return
        job = self._workers._beside.submit(_each, beside, pieces)
        try:
            for piece in pieces:
                self._feed(piece)
        finally:
            wait((job,))
        job.result()

    def _notify(self) -> None:
        self._call_soon(self._progressed)

    def _progressed(self) -> None:
        self._progress.set()
        self._workers._wake_blocked()

    def _key_done(self) -> None:
        if self.key_ready is not None and not self.key_ready.done():
            self.key_ready.set_result(None)

    def _call_soon(self, callback: Callable[[], None]) -> None:
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:   # the loop has closed (shutdown): nobody is waiting any more
            pass


def _each(hook: Callable[[bytes | memoryview], None], pieces: Sequence[bytes | memoryview]) -> None:
    for piece in pieces:
        hook(piece)


def _pieces(parts: list[bytes | memoryview]) -> Iterator[bytes | memoryview]:
    """The batch's bytes in order: large writes as they are, small ones joined (JOIN_BELOW)."""
    run: list[bytes | memoryview] = []
    size = 0
    for part in parts:
        if len(part) >= JOIN_BELOW:
            if run:
                yield b"".join(run)
                run, size = [], 0
            yield part
            continue
        run.append(part)
        size += len(part)
        if size >= JOIN_UP_TO:
            yield b"".join(run)
            run, size = [], 0
    if run:
        yield b"".join(run)

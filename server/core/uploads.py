"""One upload in flight: SFTP writes -> reorder window -> at-rest pipeline -> `_feed` (content
check, encryptor) and, beside it, the plaintext hash -> hidden temporary blob.

Nothing is visible until `DropBox.publish`; `abort` leaves nothing behind. `begin`, `write`,
`room` and `drain` run on the event loop and cost microseconds: the key derivation, hashing,
encryption and disk writes run in order in an at-rest worker (pipeline.py). `seal` and
`release` block (fsync, waiting for the worker) and are called off the event loop. One SFTP
session sends one upload's requests one at a time, so the window needs no lock. Without an
event loop (the library: `write` then `DropBox.publish`, never `begin`) the work is done inside
`write`.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass
from typing import Callable

from ..errors import UploadRejected
from .contentgate import NO_CHECK, StreamCheck
from .encryption import Encryptor, HashingOutput
from .pipeline import AtRestWorkers
from .records import Tenant
from .session import Session
from .storage import TempBlob
from .window import ReorderWindow


@dataclass(frozen=True)
class SealedUpload:
    """The result of a complete, durable upload, ready to publish."""

    plain_size: int
    plain_sha256: str
    stored_size: int
    stored_sha256: str


class Upload:
    """State of one upload; created by `DropBox.start_upload`."""

    def __init__(self, *, upload_id: str, session: Session, tenant: Tenant, name: str,
                 temp: TempBlob, out: HashingOutput, encryptor: Callable[[], Encryptor], window_factory,
                 passphrase: str, workers: AtRestWorkers, check: StreamCheck = NO_CHECK) -> None:
        self.id = upload_id
        self.session = session
        self.tenant = tenant
        self.name = name
        self.temp = temp
        self.passphrase = passphrase
        self._out = out
        self._open_encryptor = encryptor
        self._encryptor: Encryptor | None = None
        self._hash = hashlib.sha256()
        self._check = check     # [policy] content: sees the plaintext in order, refuses at seal
        # The plaintext's SHA-256 runs beside the encryption, on the same batch in another thread.
        self._pipeline = workers.pipeline(self._start, self._feed, beside=self._hash.update)
        self._window: ReorderWindow = window_factory(self._pipeline.put)
        self._lock = threading.Lock()
        self.sealed: SealedUpload | None = None
        self.finished = False  # published or aborted
        self.aborted = ""      # why it was aborted (DropBox.abort), said to the sender at close

    # --- in the at-rest worker, in order --------------------------------------------------
    def _start(self) -> None:
        """Derive the key (scrypt) and write the stored format's header (to storage at once: a
        temporary with a header is one whose key derivation has finished)."""
        self._encryptor = self._open_encryptor()
        self._open_encryptor = _started   # it holds the passphrase: keep it no longer
        self.temp.flush()

    def _feed(self, data: bytes | memoryview) -> None:
        """The in-order plaintext hook: every byte of the upload passes here exactly once, in
        order, as large writes or batches of small ones (pipeline.py), in the at-rest worker
        thread; the same bytes pass through the plaintext hash beside it. An exception raised
        here fails the upload at its next write or at its close."""
        self._check.feed(data)
        assert self._encryptor is not None
        self._encryptor.write(data)

    @property
    def failed(self) -> bool:
        """The at-rest worker failed (disk full, a refusal raised in `_feed`): nothing of this
        upload can be published any more."""
        return self._pipeline.error is not None

    @property
    def size(self) -> int:
        """Plaintext bytes received in order so far (what the sender sees as the file's size)."""
        return self.sealed.plain_size if self.sealed else self._window.position

    # --- on the event loop ----------------------------------------------------------------
    def begin(self) -> asyncio.Future[None]:
        """Start the key derivation in the worker; the future resolves when it has ended."""
        return self._pipeline.begin()

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Take one write (never blocks); raises a refusal, or an error the worker met earlier."""
        if self.sealed or self.finished:
            raise UploadRejected("the upload is already complete; open the file again to replace it")
        self._pipeline.check()
        self._window.write(offset, data)

    @property
    def must_wait(self) -> bool:
        """`room` must be awaited before the next write (else it would return at once)."""
        return self._pipeline.must_wait

    async def room(self) -> None:
        """Wait until the worker has caught up enough for the next write (bounded memory)."""
        await self._pipeline.room()

    async def drain(self) -> None:
        """Wait until every byte received in order went through `_feed`; raise a worker error."""
        await self._pipeline.drain()

    # --- off the event loop ---------------------------------------------------------------
    def seal(self) -> SealedUpload:
        """Finish the stream and make it durable. Refuses an empty or gapped upload, and one
        that [policy] content refuses. Call it after `drain`."""
        with self._lock:
            if self.sealed:
                return self.sealed
            self._pipeline.check()
            if not self._pipeline.drained():
                raise RuntimeError("seal() before drain(): the at-rest worker has not caught up")
            size = self._window.finish()
            if size == 0:
                raise UploadRejected("empty upload refused: the file has no content")
            self._check.close(self.id)      # ContentRefused: nothing is published
            assert self._encryptor is not None
            self._encryptor.close()
            self._encryptor = None   # its output buffer (up to 1 MiB) goes now, not with the handle
            self.temp.sync()
            self.temp.close()
            self.sealed = SealedUpload(size, self._hash.hexdigest(), self._out.size, self._out.hexdigest())
            return self.sealed

    def release(self) -> None:
        """Stop the worker, give back held memory and close the temporary (it is discarded by the
        caller). Blocks until the worker has finished the batch in hand."""
        self._pipeline.cancel()
        with self._lock:
            self._window.discard()
            self.temp.close()
            self.passphrase = ""


def _started() -> Encryptor:
    raise RuntimeError("the upload's encryptor was already opened")

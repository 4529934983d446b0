"""One upload in flight: SFTP writes -> reorder window -> encryptor -> hidden temporary blob.

Nothing is visible until `DropBox.publish`; `abort` leaves nothing behind. All methods block
(crypto, disk) and are called off the event loop; a lock keeps one upload's writes in order.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from ..errors import UploadRejected
from .contentgate import NO_CHECK, StreamCheck
from .encryption import Encryptor, HashingOutput
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
                 temp: TempBlob, out: HashingOutput, encryptor: Encryptor, window_factory,
                 passphrase: str, check: StreamCheck = NO_CHECK) -> None:
        self.id = upload_id
        self.session = session
        self.tenant = tenant
        self.name = name
        self.temp = temp
        self.passphrase = passphrase
        self._out = out
        self._encryptor = encryptor
        self._hash = hashlib.sha256()
        self._check = check     # [policy] content: sees the plaintext in order, refuses at seal
        self._window: ReorderWindow = window_factory(self._feed)
        self._lock = threading.Lock()
        self.sealed: SealedUpload | None = None
        self.finished = False  # published or aborted
        self.aborted = ""      # why it was aborted (DropBox.abort), said to the sender at close

    def _feed(self, data: bytes) -> None:
        self._hash.update(data)
        self._check.feed(data)
        self._encryptor.write(data)

    @property
    def size(self) -> int:
        """Plaintext bytes received in order so far (what the sender sees as the file's size)."""
        return self.sealed.plain_size if self.sealed else self._window.position

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            if self.sealed or self.finished:
                raise UploadRejected("the upload is already complete; open the file again to replace it")
            self._window.write(offset, data)

    def seal(self) -> SealedUpload:
        """Finish the stream and make it durable. Refuses an empty or gapped upload, and one
        that [policy] content refuses."""
        with self._lock:
            if self.sealed:
                return self.sealed
            size = self._window.finish()
            if size == 0:
                raise UploadRejected("empty upload refused: the file has no content")
            self._check.close(self.id)      # ContentRefused: nothing is published
            self._encryptor.close()
            self.temp.sync()
            self.temp.close()
            self.sealed = SealedUpload(size, self._hash.hexdigest(), self._out.size, self._out.hexdigest())
            return self.sealed

    def release(self) -> None:
        """Give back held memory and close the temporary (it is discarded by the caller)."""
        with self._lock:
            self._window.discard()
            self.temp.close()
            self.passphrase = ""

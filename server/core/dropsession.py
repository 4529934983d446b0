"""One user's drop session, whatever the protocol: the uploads it has open or staged, replace on
reopen, publish on close or on renaming a temporary name (NAME.filepart), the byte ranges it has
read of each file (a file is collected only when read whole), and abort on a lost connection.

A front end (server/sftp/handler.py today; FTP, WebDAV or HTTP tomorrow) resolves its paths and
handles and calls this; docs/dropsession.md is the state machine. `write`, `read` and
`close_upload`'s wait run on the event loop (microseconds; the at-rest worker does the heavy
part); the other methods block (database, disk, fsync) and are called in a thread. A session's
requests come one at a time, so the registry needs no lock.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Awaitable, Callable

from ..errors import Busy, LimitReached, PermissionDenied, UploadRejected
from .coverage import Coverage
from .deliveries import REASON_DELETED, REASON_WITHDRAWN
from .dropbox import Download, DropBox
from .names import check_name, staged_base
from .records import Delivery, Tenant
from .session import Session
from .uploads import Upload

# The `upload.abort` reasons a drop session records (docs/dropsession.md).
REPLACED = "replaced by a new upload of the same name in this session"
WRITE_FAILED = "write failed"
INCOMPLETE = "could not be completed"
REFUSED_WRITE = "closed after a refused write"
CONNECTION_LOST = "connection lost before the upload was closed"
DELETED = "deleted by the sender before publishing"
SESSION_ENDED = "session ended before the upload was complete"


class UploadState(StrEnum):
    """Where an upload of a drop session stands (docs/dropsession.md)."""

    RECEIVING = "receiving"     # open: writes arrive
    STAGED = "staged"           # a temporary name closed complete: publishes when renamed
    PUBLISHED = "published"     # a delivery now; gone from the session
    ABORTED = "aborted"         # nothing of it stays; `Incoming.aborted` says why


class Incoming:
    """An upload opened in a drop session: what a front end's write handle refers to."""

    def __init__(self, upload: Upload, tenant: str, name: str) -> None:
        self._upload = upload
        self.tenant = tenant
        self.name = name
        self.temporary = staged_base(name) is not None   # NAME.filepart: published by a rename
        self.refused: set[tuple[int, int]] = set()       # (offset, size) of refused writes

    @property
    def key(self) -> tuple[str, str]:
        return self.tenant, self.name

    @property
    def size(self) -> int:
        """Plaintext bytes received in order so far (what the sender sees as the size)."""
        return self._upload.size

    @property
    def aborted(self) -> str:
        return self._upload.aborted

    @property
    def state(self) -> UploadState:
        if self._upload.finished:
            return UploadState.ABORTED if self._upload.aborted else UploadState.PUBLISHED
        return UploadState.STAGED if self._upload.sealed else UploadState.RECEIVING

    def begin(self) -> asyncio.Future[None]:
        """Start the key derivation in the at-rest worker; resolves when it has ended."""
        return self._upload.begin()


class DropSession:
    """The upload and collection lifecycle of one logged-in user's session."""

    def __init__(self, dropbox: DropBox, session: Session,
                 on_limit: Callable[[LimitReached], None] = lambda exc: None) -> None:
        self.dropbox = dropbox
        self.session = session
        self._on_limit = on_limit       # a write or read over a limit (the front end counts breaches)
        self._uploads: dict[tuple[str, str], Incoming] = {}
        self._coverage: dict[str, Coverage] = {}    # delivery id -> what this session has read
        self.lost = False               # the connection dropped: closing uploads now aborts them

    # --- the session's uploads -------------------------------------------------------------
    @property
    def in_progress(self) -> int:
        """Uploads open or staged in this session (the front end caps it)."""
        return len(self._uploads)

    def upload_named(self, tenant: str, name: str) -> Incoming | None:
        return self._uploads.get((tenant, name))

    def uploads_in(self, tenant: str) -> list[Incoming]:
        return [incoming for (t, _), incoming in self._uploads.items() if t == tenant]

    # --- uploads ----------------------------------------------------------------------------
    def open_upload(self, tenant: Tenant, name: str) -> Incoming:
        """Start an upload (blocks); an upload of the same name open or staged in this session
        is aborted first: the client starts the file again."""
        name = check_name(name)
        key = (tenant.name, name)
        previous = self._uploads.pop(key, None)
        if previous is not None:
            self.dropbox.abort(previous._upload, REPLACED)
        incoming = Incoming(self.dropbox.start_upload(self.session, tenant.name, name), tenant.name, name)
        self._uploads[key] = incoming
        return incoming

    async def write(self, incoming: Incoming, offset: int, data: bytes | memoryview) -> None:
        """Take one write on the event loop and wait until the worker has room for the next.
        A refusal the client may still fix (a retry once shared memory frees) keeps the upload
        open but unpublishable until the same write succeeds; a final failure aborts it."""
        upload = incoming._upload
        try:
            upload.write(offset, data)
            if upload.must_wait:
                await upload.room()
        except (UploadRejected, Busy) as exc:
            if upload.failed:   # raised in the at-rest worker (Upload._feed): final
                await asyncio.to_thread(self._drop, incoming, WRITE_FAILED, exc)
                raise
            if isinstance(exc, LimitReached):
                self._on_limit(exc)
            incoming.refused.add((offset, len(data)))
            raise
        except Exception as exc:   # the at-rest worker failed (disk full...): nothing will be published
            await asyncio.to_thread(self._drop, incoming, WRITE_FAILED, exc)
            raise
        incoming.refused.discard((offset, len(data)))

    async def close_upload(self, incoming: Incoming) -> None:
        """The client closed the upload: wait (on the loop) for the at-rest worker to catch up,
        then publish it, or seal a temporary name, in a thread. Any failure aborts it."""
        upload = incoming._upload
        if not (self.lost or upload.finished or incoming.refused):
            try:
                await upload.drain()
            except Exception as exc:
                await asyncio.to_thread(self._drop, incoming, INCOMPLETE, exc)
                raise
        await asyncio.to_thread(self._finish, incoming)

    def _finish(self, incoming: Incoming) -> None:
        upload = incoming._upload
        if self.lost:   # the front end closes a lost session's handles: nobody hears an answer
            self._drop(incoming, CONNECTION_LOST)
            return
        if upload.finished:
            # Only this close publishes (or seals) an upload, so a finished one was dropped: by
            # a failed write, a new upload of the same name, or a remove. Never answer OK then.
            raise UploadRejected(f"nothing was published: {upload.aborted or 'the upload was discarded'}; "
                                 "upload the file again")
        if incoming.refused:
            offset, size = min(incoming.refused)
            error = UploadRejected(f"nothing was published: the write of {size} bytes at offset {offset} "
                                   "was refused; upload the file again")
            self._drop(incoming, REFUSED_WRITE, error)
            raise error
        try:
            if incoming.temporary:
                upload.seal()       # published when the client renames it to its final name
            else:
                self.dropbox.publish(upload)
                self._uploads.pop(incoming.key, None)
        except Exception as exc:
            self._drop(incoming, INCOMPLETE, exc)
            raise

    def rename(self, tenant: Tenant, old: str, new: str) -> Delivery:
        """Publish a staged temporary upload (NAME.filepart) under its final name (blocks)."""
        incoming = self._uploads.get((tenant.name, old))
        if incoming is None or incoming.state != UploadState.STAGED:
            raise PermissionDenied("only a completed temporary upload (such as NAME.filepart) can be renamed")
        delivery = self.dropbox.publish(incoming._upload, check_name(new))
        self._uploads.pop(incoming.key, None)
        return delivery

    def discard(self, incoming: Incoming) -> None:
        """The sender deleted an upload of this session before it was published (blocks)."""
        self._drop(incoming, DELETED)

    def _drop(self, incoming: Incoming, reason: str, exc: BaseException | None = None) -> None:
        if self._uploads.get(incoming.key) is incoming:   # not a newer upload of the same name
            del self._uploads[incoming.key]
        self.dropbox.abort(incoming._upload, reason, exc)

    # --- downloads --------------------------------------------------------------------------
    def open_download(self, stored_name: str) -> Download:
        """Open a stored file for reading (blocks); its reads add to this session's coverage."""
        delivery = self.dropbox.recipient_file(self.session, stored_name)
        coverage = self._coverage.setdefault(delivery.id, Coverage())
        try:
            return self.dropbox.open_download(self.session, stored_name, coverage)
        except LimitReached as exc:   # the process's object-store readers are all in use
            self._on_limit(exc)
            raise

    def read(self, download: Download, offset: int, size: int) -> bytes | Awaitable[bytes]:
        """One read, on the event loop (a short read is legal at the end of the file): the bytes,
        or an awaitable when the storage must fetch them (an object store's stream). A read that
        would scatter the session's coverage over too many parts is refused (LimitReached,
        coverage.MAX_RANGES), and `on_limit` hears of it, whichever way the bytes came."""
        try:
            result = download.read(offset, size)
        except LimitReached as exc:
            self._on_limit(exc)
            raise
        return result if isinstance(result, bytes) else self._read_later(result)

    async def _read_later(self, pending: Awaitable[bytes]) -> bytes:
        try:
            return await pending
        except LimitReached as exc:
            self._on_limit(exc)
            raise

    def close_download(self, download: Download) -> bool:
        """Close (blocks); True when this session has now read every byte: the file is collected."""
        return self.dropbox.close_download(self.session, download)

    def remove(self, delivery: Delivery) -> None:
        """A recipient deletes a stored file, a sender withdraws its own (blocks)."""
        reason = REASON_DELETED if self.session.is_recipient else REASON_WITHDRAWN
        self.dropbox.remove(delivery, reason, actor=self.session.actor, source=self.session.source)

    # --- end of session ---------------------------------------------------------------------
    def connection_lost(self) -> None:
        """The client is gone: uploads closed from now on are aborted, never published."""
        self.lost = True

    def end(self) -> int:
        """Abort what was not published by now (never closed, or never renamed); blocks.
        Returns how many uploads were aborted."""
        ended = 0
        for key, incoming in list(self._uploads.items()):
            self._uploads.pop(key, None)
            self.dropbox.abort(incoming._upload, SESSION_ENDED)
            ended += 1
        return ended

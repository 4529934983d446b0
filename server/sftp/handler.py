"""The SFTP server a logged-in user talks to. It only checks and delegates: every request is
normalised (paths.py), authorised (requests.py), resolved in the user's view (views.py) and
handed to the session's protocol-neutral drop session (core/dropsession.py: the upload
registry, replace, publish, read coverage, abort); core errors become SFTP errors in
status.py. Reads and writes cost microseconds and run on the event loop (an upload's hashing,
encryption and disk writes go to its at-rest worker); everything else (SQLite, open, close,
fsync) runs in a thread.
Every request leaves one log line (reads and writes at debug level).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any, AsyncIterator, Callable, TypeVar

import asyncssh
from asyncssh import SFTPAttrs, SFTPName
from asyncssh.sftp import FXF_APPEND, FXF_READ, FXF_WRITE, SFTPLimits

from ..core.audit import AuditLog
from ..core.directory import Directory
from ..core.dropbox import Download, DropBox
from ..core.dropsession import DropSession, Incoming
from ..core.session import Session
from ..errors import ContentRefused, NotFound, OutsideView, PermissionDenied
from ..logsafe import quoted
from .limits import ConnectionLimits
from .notice import tell_client
from .paths import join_path, split_path
from .requests import authorise
from .status import to_sftp_error
from .views import ReceiptHandle, View, file_attrs

log = logging.getLogger("sluis.sftp")
T = TypeVar("T")
_QUIET = {"read", "write"}


class SluisSFTPServer(asyncssh.SFTPServer):
    """One SFTP session of one user."""

    def __init__(self, chan: asyncssh.SSHServerChannel, dropbox: DropBox, directory: Directory,
                 audit: AuditLog, session: Session, limits: ConnectionLimits) -> None:
        super().__init__(chan)
        self.dropbox = dropbox
        self.directory = directory
        self.audit = audit
        self.session = session
        self.limits = limits
        self.max_message = limits.max_message
        # File handles are the drop session's own objects: Incoming (write), Download (read),
        # and ReceiptHandle (a sender's receipt, read from memory).
        self.drop = DropSession(dropbox, session,
                                on_limit=lambda exc: limits.breach(exc.limit, exc.value, exc.allowed))
        self.view = View(dropbox, directory, session, self.drop, int(time.time()))

    # --- the one wrapper every request goes through ---------------------------------------------
    async def _run(self, op: str, target: str, func: Callable[..., T], *args: Any) -> T:
        """Run `func` in a thread (it may block: SQLite, disk, fsync)."""
        return await self._call(op, target, asyncio.to_thread, func, *args)

    async def _run_here(self, op: str, target: str, func: Callable[..., Any], *args: Any) -> Any:
        """Run `func` on the event loop: only for what costs microseconds (reads, writes)."""
        return await self._call(op, target, _direct, func, *args)

    async def _call(self, op: str, target: str, runner: Callable[..., Any], func: Callable[..., Any],
                    *args: Any) -> Any:
        started = time.monotonic()
        try:
            authorise(self.session, op)
            result = runner(func, *args)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            error = to_sftp_error(exc)
            self._log(op, target, started, f"{type(error).__name__}: {error.reason}", logging.INFO)
            if isinstance(exc, (PermissionDenied, OutsideView)):
                reason = "another municipality's folder" if isinstance(exc, OutsideView) else str(exc)
                await asyncio.to_thread(self._audit_denial, op, target, reason)
            if isinstance(exc, ContentRefused):
                tell_client(self.channel, error.reason)   # clients that hide the status text
            raise error from None
        self._log(op, target, started, "ok", logging.DEBUG if op in _QUIET else logging.INFO)
        return result

    def _log(self, op: str, target: str, started: float, outcome: str, level: int) -> None:
        if not log.isEnabledFor(level):
            return
        log.log(level, "sftp user=%s session=%s from=%s op=%s path=%s result=%s ms=%.1f",
                quoted(self.session.actor), self.session.id, quoted(self.session.source), op, quoted(target),
                quoted(outcome),
                (time.monotonic() - started) * 1000)

    def _audit_denial(self, op: str, target: str, reason: str) -> None:
        tenant = self.directory.tenant_label(self.session.user.tenant_id)
        self.audit.record("sftp.deny", actor=self.session.actor, tenant=tenant,
                          source=self.session.source, op=op, path=target, reason=reason)

    @staticmethod
    def _show(path: bytes) -> str:
        return path.decode("utf-8", "backslashreplace")[:300]

    # --- names and attributes -----------------------------------------------------------------
    def format_user(self, uid: int | None) -> str:
        return "sluis"

    def format_group(self, gid: int | None) -> str:
        return "sluis"

    async def realpath(self, path: bytes) -> bytes:
        return await self._run("realpath", self._show(path),
                               lambda: join_path(self.view.canonical(split_path(path))))

    async def stat(self, path: bytes) -> SFTPAttrs:
        return await self._run("stat", self._show(path), lambda: self.view.lookup(split_path(path)).attrs)

    lstat = stat  # there are no links, so lstat and stat agree

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        return await self._run("stat", "<handle>", self._handle_attrs, file_obj)

    def _handle_attrs(self, file_obj: object) -> SFTPAttrs:
        if isinstance(file_obj, Incoming):
            return file_attrs(file_obj.size, int(time.time()))
        if isinstance(file_obj, ReceiptHandle):
            return file_attrs(len(file_obj.content), int(time.time()))
        assert isinstance(file_obj, Download)
        return file_attrs(file_obj.delivery.stored_size, int(time.time()))

    async def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        def check() -> None:
            self.view.lookup(split_path(path))
            _only_times(attrs)
        await self._run("setstat", self._show(path), check)

    async def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        await self._run("setstat", "<handle>", self._fsetstat, file_obj, attrs)

    @staticmethod
    def _fsetstat(file_obj: object, attrs: SFTPAttrs) -> None:
        # OpenSSH scp (SFTP mode) and lftp 'truncate' the file to the bytes they wrote: for an
        # upload of exactly that size that is a no-op, so it is acknowledged like the times.
        if isinstance(file_obj, Incoming) and attrs.size is not None and attrs.size == file_obj.size:
            attrs = SFTPAttrs(uid=attrs.uid, gid=attrs.gid, permissions=attrs.permissions,
                              atime=attrs.atime, mtime=attrs.mtime)
        _only_times(attrs)

    async def list_folder(self, path: bytes) -> list[SFTPName]:
        """The whole listing, computed when the folder is opened so errors surface at OPENDIR."""
        def listing() -> list[SFTPName]:
            return [SFTPName(e.name.encode(), attrs=e.attrs) for e in self.view.listing(split_path(path))]
        return await self._run("list", self._show(path), listing)

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        for name in await self.list_folder(path):
            yield name

    # --- [limits] (the handler in channel.py asks these) ------------------------------------------
    def sftp_limits(self) -> SFTPLimits:
        return self.limits.sftp_limits()

    def message_too_long(self, length: int) -> None:
        self.limits.message_too_long(length)

    def malformed(self, what: str) -> None:
        self.limits.protocol_error(what)

    def admit_handle(self, open_now: int) -> None:
        self.limits.check_handles(open_now)

    # --- files --------------------------------------------------------------------------------
    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> object:
        shown = self._show(path)
        if pflags & (FXF_WRITE | FXF_APPEND):
            self.limits.check_uploads(self.drop.in_progress)
            # Each upload derives a key with scrypt (1 MiB at the default): a few at a time. The
            # slot is held from the open until the derivation ends, but the OPEN is answered as
            # soon as the checks pass: the derivation runs in the upload's at-rest worker, and
            # the first writes queue (bounded) until the key is ready.
            slots = self.limits.key_derivation()
            await slots.acquire()
            try:
                handle = await self._run("open_write", shown, self._open_write, path, pflags)
                key_ready = handle.begin()
            except BaseException:
                slots.release()
                raise
            key_ready.add_done_callback(lambda _: slots.release())
            return handle
        if pflags & FXF_READ and self.view.is_receipt(path):  # a sender's only read (requests.py)
            return await self._run("read_receipt", shown, lambda: self.view.open_receipt(split_path(path)))
        if pflags & FXF_READ:
            return await self._run("open_read", shown, self._open_read, path)
        raise to_sftp_error(PermissionDenied("open needs read or write access"))

    def _open_read(self, path: bytes) -> Download:
        parts = split_path(path)
        if len(parts) != 1:
            raise NotFound("no such file")
        return self.drop.open_download(parts[0])

    def _open_write(self, path: bytes, pflags: int) -> Incoming:
        if pflags & (FXF_READ | FXF_APPEND):
            raise PermissionDenied("uploads are write-only and start at the beginning (no read, no append)")
        parts = split_path(path)
        return self.drop.open_upload(self.view.tenant_dir(parts), parts[1])

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        if isinstance(file_obj, ReceiptHandle):
            return await self._run("read_receipt", "<receipt>", file_obj.read, offset, size)
        if not isinstance(file_obj, Download):
            raise to_sftp_error(PermissionDenied("this handle was not opened for reading"))
        # A longer READ gets at most the cap, as from OpenSSH's sftp-server (a short read is legal).
        size = min(size, self.limits.max_read)
        return await self._run_here("read", "<handle>", self.drop.read, file_obj, offset, size)

    async def write(self, file_obj: object, offset: int, data: bytes | memoryview) -> int:
        if not isinstance(file_obj, Incoming):
            raise to_sftp_error(PermissionDenied("this handle was not opened for writing"))
        # `_run_here` without its own coroutine: one request per 4 KiB written by PuTTY.
        await self._call("write", "<handle>", _direct, self.drop.write, file_obj, offset, data)
        return len(data)

    async def close(self, file_obj: object) -> None:
        if isinstance(file_obj, Download):
            await self._run("close", file_obj.delivery.stored_name, self.drop.close_download, file_obj)
        elif isinstance(file_obj, Incoming):
            await self._run_here("close", "/".join(file_obj.key), self.drop.close_upload, file_obj)

    # --- removal and renaming ------------------------------------------------------------------
    async def remove(self, path: bytes) -> None:
        await self._run("remove", self._show(path), self._remove, path)

    def _remove(self, path: bytes) -> None:
        entry = self.view.lookup(split_path(path))
        if entry.upload is not None:
            self.drop.discard(entry.upload)
        elif entry.delivery is not None:
            self.drop.remove(entry.delivery)
        else:
            raise PermissionDenied("receipts are read-only" if entry.content is not None else "folders cannot be removed")

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._run("rename", f"{self._show(oldpath)} -> {self._show(newpath)}",
                        self._rename, oldpath, newpath)

    posix_rename = rename

    def _rename(self, oldpath: bytes, newpath: bytes) -> None:
        """Only a sealed temporary upload (WinSCP's NAME.filepart) may be renamed: that publishes it."""
        old, new = split_path(oldpath), split_path(newpath)
        tenant = self.view.tenant_dir(old)
        if self.view.tenant_dir(new).name != tenant.name:
            raise PermissionDenied("a file cannot move to another municipality's folder")
        self.drop.rename(tenant, old[1], new[1])

    # --- refused outright (the request table allows these to nobody) ----------------------------
    async def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        await self._run("mkdir", self._show(path), lambda: None)

    async def rmdir(self, path: bytes) -> None:
        await self._run("rmdir", self._show(path), lambda: None)

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        await self._run("symlink", self._show(newpath), lambda: None)

    async def readlink(self, path: bytes) -> bytes:
        return await self._run("readlink", self._show(path), lambda: b"")

    # --- end of session -------------------------------------------------------------------------
    def connection_lost(self) -> None:
        """Called before asyncssh closes a lost session's handles: they must not publish."""
        self.drop.connection_lost()

    async def exit(self) -> None:
        """Uploads not published by now (never closed, or never renamed) are discarded."""
        await asyncio.to_thread(self.drop.end)


def _direct(func: Callable[..., Any], *args: Any) -> Any:
    """The `_call` runner for work done on the event loop itself."""
    return func(*args)


def _only_times(attrs: SFTPAttrs) -> None:
    """Clients set times after an upload (rclone, WinSCP): acknowledge, ignore. Nothing else."""
    if any(getattr(attrs, name) is not None for name in ("size", "uid", "gid", "permissions")):
        raise PermissionDenied("only file times can be set (and sluis ignores them)")

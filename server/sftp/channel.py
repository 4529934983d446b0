"""asyncssh plumbing: an SFTP-only session and a stricter, more lenient-where-it-matters handler.

asyncssh builds its own session and handler when given `sftp_factory`; we build ours instead
(from `SluisSSHServer.session_requested`) so that we can:
- answer only the packets in our request table (requests.PACKETS) and advertise only those
  extensions, so nothing of asyncssh's real-filesystem defaults is reachable;
- accept write requests with stray bytes after the data, as OpenSSH's sftp-server does (rclone
  1.60's pkg/sftp sends them; asyncssh alone answers SSH_FX_BAD_MESSAGE and the upload fails);
- list a folder when it is opened, so a refused listing fails at OPENDIR;
- tell the server object when the session is going away, before asyncssh closes open handles,
  so that an upload cut off mid-way is discarded rather than published;
- hold the [limits] caps (server/sftp/limits.py): message size, open handles, the
  limits@openssh.com reply, backpressure on replies, malformed packets reported;
- answer a successful READ or WRITE (most of a transfer's requests) without upstream's
  dispatch and its per-request debug formatting; a failed one gets upstream's error reply.
This uses asyncssh internals (SSHServerStreamSession, SFTPServerHandler); pyproject pins the
minor version, each override names the upstream behaviour it replaces, and
tests/test_sftp_limits.py::test_asyncssh_internals fails when an upgrade changes one of them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Awaitable, Callable, Mapping, Protocol, cast

from asyncssh.channel import SSHServerChannel
from asyncssh.misc import plural
from asyncssh.packet import PacketDecodeError, SSHPacket, String, UInt32
from asyncssh.sftp import (
    FX_OK, FXP_DATA, FXP_INIT, FXP_OPEN, FXP_OPENDIR, FXP_READ, FXP_STATUS, FXP_WRITE, SFTPBadMessage,
    SFTPEOFError, SFTPInvalidHandle, SFTPLimits, SFTPServerHandler,
)
from asyncssh.stream import SSHReader, SSHServerStreamSession, SSHWriter

from .handler import SluisSFTPServer
from .requests import EXTENSIONS, PACKETS

SFTP_VERSION = 3
MIN_MESSAGE = 5  # a type byte and a request id (or INIT's version)
OK_STATUS = UInt32(FX_OK) + String("") + String("")   # upstream's OK reply body, byte for byte
REPLAY = -1      # a handler key no request can have (the wire's type is one byte): see _process_packet
_Handler = Callable[[Any, SSHPacket], Awaitable[Any]]


class Tracker(Protocol):
    """InFlight.track: holds a task until done, for shutdown to wait on."""

    def __call__(self, future: asyncio.Future[Any], label: str, *, report: bool = True) -> None: ...


def _reporting_malformed(func: _Handler) -> _Handler:
    """Upstream answers a packet it cannot decode with SSH_FX_BAD_MESSAGE and goes on; that stays,
    but the server is told first (audit `protocol.error`, disconnect after repeats)."""
    @functools.wraps(func)
    async def handle(self: SluisSFTPHandler, packet: SSHPacket) -> Any:
        try:
            return await func(self, packet)
        except PacketDecodeError as exc:
            self._server.malformed(f"{func.__name__.removeprefix('_process_')}: {exc}")
            raise
    return handle


class SluisSFTPHandler(SFTPServerHandler):
    """SFTPServerHandler restricted to sluis's request table."""

    _extensions = list(EXTENSIONS)
    _server: SluisSFTPServer
    _init_seen = False
    _take: Callable[[int], bytes | None] = staticmethod(lambda size: None)
    _failed: Exception | None = None
    _debug = False    # asyncssh's debug lines are on (logging is configured once, at start)

    def read_from(self, session: SluisSession) -> None:
        """Read messages from `session.take` when their bytes are buffered (no lock, no wait)."""
        self._take = session.take
        self._debug = self.logger.isEnabledFor(logging.DEBUG)

    async def recv_packet(self) -> SSHPacket:
        """Replaces SFTPHandler.recv_packet, which refuses only above asyncssh's MAX_SFTP_PACKET_LEN
        (4 MiB + 1 KiB): here the [limits] max_message (256 KiB, OpenSSH's SFTP_MAX_MSG_LENGTH) is
        checked on the length field, before the body is read, and the session ends (as OpenSSH)."""
        assert self._reader is not None
        take = self._take
        head = take(4)
        length = int.from_bytes(head if head is not None else await self._reader.readexactly(4), "big")
        allowed = self._server.max_message
        if length > allowed:
            self._server.message_too_long(length)
            raise SFTPBadMessage(f"SFTP message of {length} bytes refused: at most {allowed}")
        if length < MIN_MESSAGE:
            self._server.malformed(f"SFTP message of {length} bytes is too short")
            raise SFTPBadMessage(f"SFTP message of {length} bytes is too short")
        data = take(length)
        if data is None:
            data = await self._reader.readexactly(length)
        if not self._init_seen:   # upstream run() ends a session whose first message is not INIT
            self._init_seen = True
            if data[0] != FXP_INIT:
                self._server.malformed(f"first message of type {data[0]}, not INIT")
        return SSHPacket(data)

    def log_received_packet(self, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        """Upstream (SSHPacketLogger._log_packet) formats a description of every request, an
        f-string and a `plural`, before its logger drops it below debug level 3, where asyncssh
        prints packets: about 2 µs of each 4 KiB write from PuTTY. Here the level comes first."""
        if self.logger._debug_level >= 3:
            super().log_received_packet(pkttype, pktid, packet, note)

    async def _process_packet(self, pkttype: int, pktid: int, packet: SSHPacket) -> None:
        """Upstream writes each reply without waiting for the channel to take it, so a client that
        sends READs and never reads the replies could grow the send buffer without bound. Requests
        are handled one at a time (SFTPHandler.recv_packets awaits each), so waiting here for the
        buffer to drain below asyncssh's high-water mark bounds both directions: the next request
        is read only after the reply went out, and unread requests stay in the receive window.

        A WRITE or READ (PuTTY sends one per 4 KiB written and per 32 KiB read) that succeeds is
        answered here with the reply upstream sends (WRITE: its OK status; READ: the data, in SFTP
        version 3 without an end flag), without upstream's dispatch, debug lines and reply
        concatenations (a copy of the data); one that fails is answered by upstream's error
        mapping, as any other."""
        if pkttype == FXP_WRITE or pkttype == FXP_READ:
            try:
                result = await cast(_Handler, self._packet_handlers[pkttype])(self, packet)   # the table's
            except Exception as exc:
                self._failed = exc
                await super()._process_packet(REPLAY, pktid, packet)   # raises it in its mapping
            else:
                if pkttype == FXP_WRITE:
                    if self._debug:
                        self.logger.debug1("Sending OK")
                    self.send_packet(FXP_STATUS, pktid, UInt32(pktid), OK_STATUS)
                else:
                    data = result[0]
                    if self._debug:
                        self.logger.debug1("Sending %s", plural(len(data), "data byte"))
                    self.send_packet(FXP_DATA, pktid, UInt32(pktid), UInt32(len(data)), data)
        else:
            await super()._process_packet(pkttype, pktid, packet)
        if self._writer is not None:
            await self._writer.drain()

    async def _raise_failed(self, packet: SSHPacket) -> None:
        """The REPLAY handler: the failure `_process_packet` caught, for upstream to answer."""
        failed, self._failed = self._failed, None
        assert failed is not None
        raise failed

    async def _process_open_capped(self, packet: SSHPacket) -> bytes:
        """Upstream _process_open opens without a bound; the [limits] handles_per_session cap is
        checked first, so the refused open costs no descriptor and no key derivation."""
        self._server.admit_handle(len(self._file_handles) + len(self._dir_handles))
        return await SFTPServerHandler._process_open(self, packet)

    async def _process_limits_sluis(self, packet: SSHPacket) -> SFTPLimits:
        """Replaces upstream _process_limits, which advertises 4 MiB messages and reads and the
        process's whole descriptor table as open handles: sluis's own caps are advertised."""
        packet.check_end()
        return self._server.sftp_limits()

    async def _process_write_lenient(self, packet: SSHPacket) -> int:
        """Replaces upstream _process_write, which refuses stray bytes after the data and copies
        the data out of the message (`get_string`): here it is a view of the message, which the
        at-rest pipeline joins into its batch, one copy fewer per written byte."""
        handle = packet.get_string()
        offset = packet.get_uint64()
        size = packet.get_uint32()
        # The message is type (1), id (4), handle (4 + n), offset (8), data length (4), data.
        start = MIN_MESSAGE + 4 + len(handle) + 8 + 4
        message = packet.get_full_payload()
        if start + size > len(message):
            raise PacketDecodeError("Incomplete packet")
        data = memoryview(message)[start:start + size]
        # No packet.check_end(): trailing bytes after the data are ignored, like OpenSSH does.
        file_obj = self._file_handles.get(handle)
        if not file_obj:
            raise SFTPInvalidHandle("Invalid file handle")
        return await self._server.write(file_obj, offset, data)

    async def _process_read_quiet(self, packet: SSHPacket) -> tuple[bytes, bool]:
        """Replaces upstream _process_read, which formats a debug line for every READ (`plural`,
        the handle in hex) before its logger drops it: the same checks and results, the line only
        when asyncssh's debug lines are on. SFTP version 3 has no end flag (always False)."""
        handle = packet.get_string()
        offset = packet.get_uint64()
        length = packet.get_uint32()
        packet.check_end()
        if self._debug:
            self.logger.debug1("Received read for %s at offset %d in handle %s",
                               plural(length, "byte"), offset, handle.hex())
        file_obj = self._file_handles.get(handle)
        if not file_obj:
            raise SFTPInvalidHandle("Invalid file handle")
        data = await self._server.read(file_obj, offset, length)
        if not data:
            raise SFTPEOFError
        return data, False

    async def _process_opendir_checked(self, packet: SSHPacket) -> bytes:
        path = packet.get_string()
        packet.check_end()
        self._server.admit_handle(len(self._file_handles) + len(self._dir_handles))
        names = await self._server.list_folder(path)

        async def entries() -> Any:
            for name in names:
                yield name

        handle = self._get_next_handle()
        self._dir_handles[handle] = entries()
        return handle

    async def _cleanup(self, exc: Exception | None) -> None:
        if self._server:
            self._server.connection_lost()
        if self._writer is not None:
            # Report an exit status before the channel closes, as OpenSSH's sftp-server does:
            # OpenSSH scp (SFTP mode) treats a session without one as failed and exits 1.
            # (The channel may be asyncssh's line-editor wrapper, which passes exit() through.)
            cast(SSHServerChannel, self._writer.channel).exit(0 if exc is None else 1)
        await super()._cleanup(exc)

    _packet_handlers = {
        **{kind: _reporting_malformed(cast(_Handler, func)) for kind, func in {
            **{kind: func for kind, func in SFTPServerHandler._packet_handlers.items() if kind in PACKETS},
            FXP_WRITE: _process_write_lenient,
            FXP_READ: _process_read_quiet,
            FXP_OPENDIR: _process_opendir_checked,
            FXP_OPEN: _process_open_capped,
            b"limits@openssh.com": _process_limits_sluis,
        }.items()},
        REPLAY: cast(_Handler, _raise_failed),
    }


class SluisSession(SSHServerStreamSession):
    """A session channel that offers the 'sftp' subsystem and nothing else (no shell, exec, pty)."""

    accepts_views = True   # fastrecv hands channel data over as views of the decrypted packet

    def take(self, size: int) -> bytes | None:
        """`size` bytes from the receive buffer if that many are there and no read is waiting,
        else None (then SSHStreamSession.read, which waits). Upstream `readexactly` slices the
        first buffered piece (a copy of its rest) and takes a lock per call; here the rest stays
        a view, and one copy (or none, for a whole bytes piece) makes the result. Reading is
        resumed as upstream's read does, once the buffer is under the channel window."""
        if size <= 0 or self._recv_buf_len < size or self._read_locks[None].locked():
            return None
        pending = self._recv_buf[None]
        head = pending[0]
        if isinstance(head, Exception):
            return None
        if len(head) > size:
            data = bytes(head[:size])
            pending[0] = memoryview(head)[size:]
        elif len(head) == size:
            del pending[0]
            data = head if type(head) is bytes else bytes(head)
        else:   # spread over pieces (an exception queued among them: leave it all to read())
            ahead, count = 0, 0
            while ahead < size:
                queued = pending[count]
                if isinstance(queued, Exception):
                    return None
                ahead += len(queued)
                count += 1
            pieces: list[bytes | memoryview] = []
            need = size
            while need:
                piece = cast("bytes | memoryview", pending[0])   # data: exceptions checked above
                if len(piece) > need:
                    pieces.append(piece[:need])
                    pending[0] = memoryview(piece)[need:]
                    need = 0
                else:
                    del pending[0]
                    pieces.append(piece)
                    need -= len(piece)
            data = b"".join(pieces)
        self._recv_buf_len -= size
        self._maybe_resume_reading()
        return data

    def __init__(self, make_server: Callable[[Any], SluisSFTPServer],
                 on_close: Callable[[], None] = lambda: None, track: Tracker | None = None) -> None:
        super().__init__(None, make_server, SFTP_VERSION, allow_scp=False)
        self._make_server = make_server
        self._on_close = on_close
        self._track = track

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel is gone: give its place back ([limits] channels_per_connection)."""
        self._on_close()
        self._on_close = lambda: None
        super().connection_lost(exc)

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: Mapping[int, int]) -> bool:
        return False

    def shell_requested(self) -> bool:
        return False

    def exec_requested(self, command: str) -> bool:
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp"

    def session_started(self) -> None:
        chan, conn = self._chan, self._conn
        if chan is None or conn is None:   # asyncssh sets both in connection_made, before this
            raise RuntimeError("SFTP session started without its channel")
        if chan.get_subsystem() != "sftp":   # unreachable: every other request was refused
            chan.close()
            return
        chan.set_encoding(None)
        self._encoding = None
        reader: SSHReader[bytes] = SSHReader(self, chan)
        writer: SSHWriter[bytes] = SSHWriter(self, chan)
        handler = SluisSFTPHandler(self._make_server(chan), reader, writer, SFTP_VERSION)
        handler.read_from(self)
        task = conn.create_task(handler.run(), reader.logger)
        if self._track is not None:   # shutdown waits for the session's cleanup (asyncssh logs its errors)
            self._track(task, "SFTP session", report=False)

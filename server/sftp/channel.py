"""asyncssh plumbing: an SFTP-only session and a stricter, more lenient-where-it-matters handler.

asyncssh builds its own session and handler when given `sftp_factory`; we build ours instead
(from `SluisSSHServer.session_requested`) so that we can:
- answer only the packets in our request table (requests.PACKETS) and advertise only those
  extensions, so nothing of asyncssh's real-filesystem defaults is reachable;
- accept write requests with stray bytes after the data, as OpenSSH's sftp-server does (rclone
  1.60's pkg/sftp sends them; asyncssh alone answers SSH_FX_BAD_MESSAGE and the upload fails);
- list a folder when it is opened, so a refused listing fails at OPENDIR;
- tell the server object when the session is going away, before asyncssh closes open handles,
  so that an upload cut off mid-way is discarded rather than published.
This uses asyncssh internals (SSHServerStreamSession, SFTPServerHandler); pyproject pins the
minor version and the tests exercise every one of these paths.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, cast

from asyncssh.channel import SSHServerChannel
from asyncssh.packet import SSHPacket
from asyncssh.sftp import FXP_OPENDIR, FXP_WRITE, SFTPInvalidHandle, SFTPServerHandler
from asyncssh.stream import SSHReader, SSHServerStreamSession, SSHWriter

from .handler import SluisSFTPServer
from .requests import EXTENSIONS, PACKETS

SFTP_VERSION = 3


class SluisSFTPHandler(SFTPServerHandler):
    """SFTPServerHandler restricted to sluis's request table."""

    _extensions = list(EXTENSIONS)
    _server: SluisSFTPServer

    async def _process_write_lenient(self, packet: SSHPacket) -> int:
        handle = packet.get_string()
        offset = packet.get_uint64()
        data = packet.get_string()
        # No packet.check_end(): trailing bytes after the data are ignored, like OpenSSH does.
        file_obj = self._file_handles.get(handle)
        if not file_obj:
            raise SFTPInvalidHandle("Invalid file handle")
        return await self._server.write(file_obj, offset, data)

    async def _process_opendir_checked(self, packet: SSHPacket) -> bytes:
        path = packet.get_string()
        packet.check_end()
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
        **{kind: func for kind, func in SFTPServerHandler._packet_handlers.items() if kind in PACKETS},
        FXP_WRITE: _process_write_lenient,
        FXP_OPENDIR: _process_opendir_checked,
    }


class SluisSession(SSHServerStreamSession):
    """A session channel that offers the 'sftp' subsystem and nothing else (no shell, exec, pty)."""

    def __init__(self, make_server: Callable[[Any], SluisSFTPServer]) -> None:
        super().__init__(None, make_server, SFTP_VERSION, allow_scp=False)

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
        if self._chan.get_subsystem() != "sftp":   # unreachable: every other request was refused
            self._chan.close()
            return
        self._chan.set_encoding(None)
        self._encoding = None
        reader: SSHReader[bytes] = SSHReader(self, self._chan)
        writer: SSHWriter[bytes] = SSHWriter(self, self._chan)
        handler = SluisSFTPHandler(self._sftp_factory(self._chan), reader, writer, SFTP_VERSION)
        self._conn.create_task(handler.run(), reader.logger)

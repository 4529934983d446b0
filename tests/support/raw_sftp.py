"""A raw SFTP v3 client over an asyncssh session channel (subsystem sftp): it sends the bytes it
is given, however wrong, and reads replies as they come. For the limit and fuzz tests, together
with /proc readings of the server process (resident memory, peak memory, open descriptors)."""

from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from tests.support.server import SluisServer

INIT, VERSION, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT, OPENDIR, READDIR, REMOVE, \
    MKDIR, RMDIR, REALPATH, STAT, RENAME, READLINK, SYMLINK = \
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20
STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED, EXTENDED_REPLY = 101, 102, 103, 104, 105, 200, 201
FX_OK, FX_EOF, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED, FX_FAILURE, FX_BAD_MESSAGE = 0, 1, 2, 3, 4, 5
FX_OP_UNSUPPORTED = 8
FXF_READ, FXF_WRITE, FXF_CREAT, FXF_TRUNC = 0x01, 0x02, 0x08, 0x10
REPLY_TIMEOUT = 15.0


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def string(value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return u32(len(data)) + data


@dataclass
class Reply:
    kind: int
    id: int
    body: bytes

    @property
    def code(self) -> int:
        assert self.kind == STATUS, f"expected a status, got type {self.kind}"
        return struct.unpack(">I", self.body[:4])[0]

    @property
    def message(self) -> str:
        assert self.kind == STATUS
        (length,) = struct.unpack(">I", self.body[4:8])
        return self.body[8:8 + length].decode(errors="replace")

    @property
    def handle(self) -> bytes:
        assert self.kind == HANDLE, f"expected a handle, got {self}"
        (length,) = struct.unpack(">I", self.body[:4])
        return self.body[4:4 + length]

    @property
    def data(self) -> bytes:
        assert self.kind == DATA, f"expected data, got {self}"
        (length,) = struct.unpack(">I", self.body[:4])
        return self.body[4:4 + length]


class RawSFTP:
    """One SFTP session, spoken byte by byte."""

    def __init__(self, writer: asyncssh.SSHWriter[bytes], reader: asyncssh.SSHReader[bytes]) -> None:
        self.writer = writer
        self.reader = reader
        self.next_id = 1
        self.extensions: dict[bytes, bytes] = {}

    @classmethod
    async def open(cls, conn: asyncssh.SSHClientConnection, init: bool = True) -> RawSFTP:
        writer, reader, _ = await conn.open_session(subsystem="sftp", encoding=None)
        raw = cls(writer, reader)
        if init:
            raw.send_bytes(u32(5) + bytes([INIT]) + u32(3))
            reply = await raw.read_reply()
            assert reply.kind == VERSION, reply
        return raw

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, kind: int, body: bytes) -> int:
        """Send a well-framed request (type, id, body); returns its id."""
        pktid = self.next_id
        self.next_id += 1
        payload = bytes([kind]) + u32(pktid) + body
        self.writer.write(u32(len(payload)) + payload)
        return pktid

    async def read_reply(self, timeout: float = REPLY_TIMEOUT) -> Reply:
        async def read() -> Reply:
            length = struct.unpack(">I", await self.reader.readexactly(4))[0]
            payload = await self.reader.readexactly(length)
            if payload[0] == VERSION:
                return Reply(VERSION, 0, payload[5:])
            return Reply(payload[0], struct.unpack(">I", payload[1:5])[0], payload[5:])
        return await asyncio.wait_for(read(), timeout)

    async def request(self, kind: int, body: bytes) -> Reply:
        pktid = self.send(kind, body)
        reply = await self.read_reply()
        assert reply.id == pktid, (reply, pktid)
        return reply

    async def extended(self, name: bytes, body: bytes = b"") -> Reply:
        return await self.request(EXTENDED, string(name) + body)

    async def open_file(self, path: str | bytes, flags: int) -> Reply:
        return await self.request(OPEN, string(path) + u32(flags) + u32(0))

    async def opendir(self, path: str | bytes) -> Reply:
        return await self.request(OPENDIR, string(path))

    async def close(self, handle: bytes) -> Reply:
        return await self.request(CLOSE, string(handle))

    async def read(self, handle: bytes, offset: int, length: int) -> Reply:
        return await self.request(READ, string(handle) + u64(offset) + u32(length))

    async def write(self, handle: bytes, offset: int, data: bytes) -> Reply:
        return await self.request(WRITE, string(handle) + u64(offset) + string(data))

    async def ended(self, timeout: float = REPLY_TIMEOUT) -> bool:
        """True when the server closes the session (EOF), after any replies still on the way."""
        async def drain() -> None:
            while await self.reader.read(65536):
                pass
        try:
            await asyncio.wait_for(drain(), timeout)
        except (asyncssh.Error, OSError, asyncio.IncompleteReadError):
            return True
        return self.reader.at_eof()

    def close_channel(self) -> None:
        self.writer.channel.close()


async def connect(server: SluisServer, user: str, **options: object) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect("127.0.0.1", server.port, username=user, known_hosts=None,
                                  client_keys=[str(server.accounts[user].key)], agent_path=None,
                                  **options)  # type: ignore[arg-type]


# --- the server process, from /proc ----------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) in KiB, and the number of open descriptors."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    found["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return found

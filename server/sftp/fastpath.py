"""The transport fast path: a few asyncssh 2.24 internals replaced by cheaper equivalents.

Installed once, by `sluis serve` (server/cli/ops.py), in the server process only. What goes on
the wire is the same SSH protocol an unpatched peer expects; only the per-packet work of the
server changes. Each override names the upstream behaviour it replaces, docs/sftp.md ("Fast
path") says why it is safe, tests/test_fastpath_wire.py checks it with real unpatched clients,
and tests/test_fastpath.py checks the encryptions byte for byte and fails loudly (digest
tripwire) when an asyncssh upgrade changes an overridden internal.

- `send_packet`: no empty MSG_IGNORE before each packet when the cipher is AEAD or
  encrypt-then-MAC (kept for plain encrypt-and-MAC); the packet is built with one join
  instead of three concatenations, its random padding cut from a pool filled by one
  getrandom() per 4 KiB; AEAD packets are sealed by the contexts below.
- Encryption (server/sftp/fastciphers.py): AES-GCM keeps one AESGCM object per direction and key;
  ChaCha20-Poly1305 keeps two ChaCha20 contexts per direction (main and length key), moved to
  each packet's nonce with `reset_nonce` (upstream: three new contexts per packet), Poly1305 fed
  in pieces; encrypt-then-MAC HMAC starts from a keyed copy instead of re-keying per packet.
- `_send`: the packets of one loop iteration leave in one transport write (bounded:
  COALESCE_LIMIT bytes at most wait; the transport's own flow control still applies).
- Flow control: the transport's pause_writing (ignored upstream) pauses the channels' sessions,
  so SFTP replies wait (channel.py's drain) instead of piling up in the transport buffer.
- Receive (server/sftp/fastrecv.py): input read at an offset and cut once per socket read, each
  packet verified and decrypted in place, channel data handed to the session as a view.
- Channel data: `write` keeps the caller's bytes (a view, no bytearray copy); packets are
  filled across writes, a short tail waiting for the end of the loop iteration (the replies
  answered in one iteration share packets, as sshd packs its subsystem's output); views are
  sliced and handed down unjoined; SFTP replies are built with one join instead of two
  concatenations (server/sftp/fastchannel.py).
- Half the window (fastchannel.py): a download keeps at most half the largest window its
  client granted, plus one packet, unacknowledged (upstream: all of it), so OpenSSH's client
  does not buffer megabytes it cannot pass on yet; a client that has not adjusted after STALL
  seconds gets its whole window. Left out with `[limits] send_half_window = false`.
- Logging: asyncssh's logger checks the level before it turns the arguments into text.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Sequence

import asyncssh.channel as _channel
import asyncssh.connection as _connection
import asyncssh.encryption as _encryption
import asyncssh.logging as _logging
import asyncssh.sftp as _sftp
from asyncssh.constants import (
    MSG_DEBUG, MSG_IGNORE, MSG_KEX_LAST, MSG_NEWKEYS,
    MSG_SERVICE_ACCEPT, MSG_SERVICE_REQUEST, MSG_USERAUTH_BANNER, MSG_USERAUTH_LAST,
)
from asyncssh.encryption import ChachaEncryption, ETMEncryption, GCMEncryption
from asyncssh.misc import CompressionError, ProtocolError
from asyncssh.packet import Byte, String, UInt32

from . import fastchannel, fastrecv
from .fastciphers import FastBasicEncryption, FastChachaEncryption, FastETMEncryption, FastGCMEncryption

COALESCE_LIMIT = 256 * 1024   # bytes of packets that may wait for the end of a loop iteration
PAD_POOL = 4096               # random bytes fetched at once for packet padding


class _Padding:
    """Random padding from one getrandom() call per PAD_POOL bytes instead of one per packet
    (upstream: `os.urandom(padlen)` for every packet, a system call for 4 to 19 bytes). Every
    byte comes from the OS CSPRNG and is used once. Event loop only."""

    def __init__(self) -> None:
        self._pool = b""
        self._used = 0

    def take(self, size: int) -> bytes:
        end = self._used + size
        if end > len(self._pool):
            self._pool, self._used, end = os.urandom(max(PAD_POOL, size)), 0, size
        chunk = self._pool[self._used:end]
        self._used = end
        return chunk


_padding = _Padding()

# Ciphers whose packets need no MSG_IGNORE in front: AEAD, and encrypt-then-MAC.
_NO_IGNORE = (GCMEncryption, ChachaEncryption, ETMEncryption)
_SEALS = (FastGCMEncryption, FastChachaEncryption, FastETMEncryption)


# --------------------------------------------------------------------------- connection

def send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
    """Replaces SSHConnection.send_packet. Upstream sends an empty MSG_IGNORE before every
    packet once encryption is on (a CBC-era countermeasure: it randomises the first block an
    attacker could predict); with AEAD or encrypt-then-MAC ciphers it protects nothing and costs
    a second encryption and send per packet, so it is sent only for encrypt-and-MAC ciphers.
    Upstream also builds the packet with three concatenations and appends the MAC with a fourth;
    here one join, and the sealed pieces go to `_send` unjoined. Rekeying, deferral before
    kex/auth, sequence numbers (strict kex included) and logging are upstream's."""
    if (self._auth_complete and self._kex_complete and
            (self._rekey_bytes_sent >= self._rekey_bytes or
             (self._rekey_seconds and time.monotonic() >= self._rekey_time))):
        self._send_kexinit()
        self._kexinit_sent = True

    if (((pkttype in {MSG_DEBUG, MSG_SERVICE_REQUEST, MSG_SERVICE_ACCEPT} or
          pkttype > MSG_KEX_LAST) and not self._kex_complete) or
            (pkttype == MSG_USERAUTH_BANNER and
             not (self._auth_in_progress or self._auth_complete)) or
            (pkttype > MSG_USERAUTH_LAST and not self._auth_complete)):
        self._deferred_packets.append((pkttype, args))
        return

    encryption = self._send_encryption
    if encryption and pkttype > MSG_KEX_LAST and not isinstance(encryption, _no_ignore):
        send_packet(self, MSG_IGNORE, String(b""))

    kind = Byte(pkttype)
    if self._compressor and (self._auth_complete or not self._compress_after_auth):
        payload = self._compressor.compress(kind + b"".join(args))
        if payload is None:  # pragma: no cover
            raise CompressionError("Compression failed")
        parts: Sequence[bytes] = (payload,)
        size = len(payload)
    else:
        parts = (kind, *args)
        size = 1 + sum(map(len, args))

    padlen = -(self._send_enchdrlen + size) % self._send_blocksize
    if padlen < 4:
        padlen += self._send_blocksize
    packet = b"".join((Byte(padlen), *parts, _padding.take(padlen)))
    pktlen = len(packet)
    hdr = UInt32(pktlen)
    seq = self._send_seq

    if isinstance(encryption, _SEALS):
        self._send(*encryption.seal(seq, hdr, packet))
    elif encryption:
        data, mac = encryption.encrypt_packet(seq, hdr, packet)
        self._send(data, mac)
    else:
        self._send(hdr, packet)

    if self._send_seq == 0xffffffff and not encryption:
        self._send_seq = 0
        raise ProtocolError("Sequence rollover before kex complete")

    if pkttype == MSG_NEWKEYS and self._strict_kex:
        self._send_seq = 0
    else:
        self._send_seq = (seq + 1) & 0xffffffff

    if self._kex_complete:
        self._rekey_bytes_sent += pktlen

    if not handler:
        handler = self
    if handler.logger._debug_level >= 3:   # upstream builds the payload for this log line always
        handler.log_sent_packet(pkttype, seq, kind + b"".join(args))


def _send(self: Any, *pieces: bytes) -> None:
    """Replaces SSHConnection._send, one `transport.write` per packet (one send() system call
    each, twice with MSG_IGNORE): the packets of one loop iteration are joined and written once,
    at the end of the iteration, or at once when COALESCE_LIMIT bytes wait. Order is kept; the
    transport's buffer limits and pause_writing apply to every write as before."""
    if not self._transport:
        return
    pending = self.__dict__.get("_fp_pending")
    if pending is None:
        pending = self._fp_pending = []
        self._fp_pending_len = 0
    pending.extend(pieces)
    self._fp_pending_len += sum(map(len, pieces))
    if self._fp_pending_len >= COALESCE_LIMIT:
        _flush(self)
    elif not self.__dict__.get("_fp_scheduled"):
        self._fp_scheduled = True
        self._loop.call_soon(_flush, self)


def _flush(self: Any) -> None:
    """Write what `_send` collected (also called before the transport is closed)."""
    self._fp_scheduled = False
    pending = self.__dict__.get("_fp_pending")
    if not pending:
        return
    pieces = list(pending)
    pending.clear()
    self._fp_pending_len = 0
    if self._transport:
        try:
            # uvloop hands the pieces to writev (no join); asyncio 3.11 joins them itself.
            self._transport.writelines(pieces)
        except ConnectionError:  # pragma: no cover  (as upstream _send)
            pass


_upstream_send = _connection.SSHConnection._send
_upstream_force_close = _connection.SSHConnection._force_close


def _send_joined(self: Any, *pieces: bytes) -> None:
    """`_send` for send_packet's pieces when writes are not coalesced: one write per packet."""
    _upstream_send(self, b"".join(pieces))


def _force_close(self: Any, exc: Optional[Exception]) -> None:
    """Wraps SSHConnection._force_close (which aborts the transport): what `_send` still holds
    (a DISCONNECT, the last replies) is written first, as upstream had written it already."""
    _flush(self)
    _upstream_force_close(self, exc)


def pause_writing(self: Any) -> None:
    """Replaces SSHConnection.pause_writing, a no-op upstream ("Do nothing with this for now"),
    so the transport's buffer grew as far as the peer's channel windows allow (PuTTY opens
    2 GiB): every channel's session is paused, and SFTP replies wait in `drain`
    (server/sftp/channel.py) until the transport is below its low-water mark."""
    self._fp_transport_paused = True
    for chan in list(self._channels.values()):
        if chan._session is not None and not chan._send_paused:
            chan._session.pause_writing()


def resume_writing(self: Any) -> None:
    """Replaces SSHConnection.resume_writing (a no-op upstream): the sessions paused by
    pause_writing resume, unless their own channel is still paused by its window."""
    self._fp_transport_paused = False
    for chan in list(self._channels.values()):
        if chan._session is not None and not chan._send_paused:
            chan._session.resume_writing()


# --------------------------------------------------------------------------- SFTP replies

def sftp_send_packet(self: Any, pkttype: int, pktid: Optional[int], *args: bytes) -> None:
    """Replaces SFTPHandler.send_packet, which builds each reply with two concatenations (type
    and arguments, then the length in front: two copies of a READ's data) and formats a log
    line for it whatever the debug level: one join, and the line only at debug level 3, where
    asyncssh prints packets."""
    if not self._writer:
        raise _sftp.SFTPNoConnection("Connection not open")
    if self._writer.channel.is_closing():
        return
    size = 1 + sum(map(len, args))
    self._writer.write(b"".join((UInt32(size), Byte(pkttype), *args)))
    if self.logger._debug_level >= 3:
        self.log_sent_packet(pkttype, pktid, Byte(pkttype) + b"".join(args))


# --------------------------------------------------------------------------- logging

def logger_log(self: Any, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
    """Replaces SSHLogger.log, which turns every argument into text (a list and a call per
    argument) before LoggerAdapter.log looks at the level: asyncssh logs a debug line for every
    READ and its reply, dropped below DEBUG after that work. Here the level comes first."""
    if self.isEnabledFor(level):
        _upstream_log(self, level, msg, *args, **kwargs)


_upstream_log = _logging.SSHLogger.log


# --------------------------------------------------------------------------- install

# (owner, attribute) -> replacement. tests/test_fastpath.py keeps the digests of the upstream
# originals; asyncssh is pinned to the 2.24 minor series in pyproject.toml.
_ENCRYPTIONS = {b"chacha20-poly1305@openssh.com": FastChachaEncryption,
                b"aes256-gcm@openssh.com": FastGCMEncryption, b"aes128-gcm@openssh.com": FastGCMEncryption,
                b"aes256-ctr": FastBasicEncryption, b"aes192-ctr": FastBasicEncryption,
                b"aes128-ctr": FastBasicEncryption}
_METHODS: dict[tuple[type, str], Callable[..., Any]] = {
    (_connection.SSHConnection, "send_packet"): send_packet,
    (_connection.SSHConnection, "_send"): _send,
    (_connection.SSHConnection, "_force_close"): _force_close,
    (_connection.SSHConnection, "pause_writing"): pause_writing,
    (_connection.SSHConnection, "resume_writing"): resume_writing,
    (_channel.SSHChannel, "_pause_resume_writing"): fastchannel.channel_pause_resume_writing,
    (_channel.SSHChannel, "write"): fastchannel.channel_write,
    (_channel.SSHChannel, "_flush_send_buf"): fastchannel.channel_flush_send_buf,
    (_channel.SSHChannel, "send_packet"): fastchannel.channel_send_packet,
    (_sftp.SFTPHandler, "send_packet"): sftp_send_packet,
    (_logging.SSHLogger, "log"): logger_log,
    (_connection.SSHConnection, "_recv_data"): fastrecv._recv_data,
    (_connection.SSHConnection, "_recv_pkthdr"): fastrecv._recv_pkthdr,
    (_connection.SSHConnection, "_recv_packet"): fastrecv._recv_packet,
}
_PARTS: dict[str, list[tuple[type, str]]] = {"packet": [(_connection.SSHConnection, "send_packet")],
          "coalesce": [(_connection.SSHConnection, "_send"), (_connection.SSHConnection, "_force_close")],
          "flow": [(_connection.SSHConnection, "pause_writing"), (_connection.SSHConnection, "resume_writing"),
                   (_channel.SSHChannel, "_pause_resume_writing")],
          "channel": [(_channel.SSHChannel, name) for name in ("write", "_flush_send_buf", "send_packet")]
          + [(_sftp.SFTPHandler, "send_packet"), (_logging.SSHLogger, "log")],
          "recv": [(_connection.SSHConnection, name) for name in ("_recv_data", "_recv_pkthdr", "_recv_packet")]}
PARTS = frozenset({"packet", "no-ignore", "ciphers", "coalesce", "flow", "channel", "half-window", "recv"})
# The upstream originals, taken at import (before any install): tests/test_fastpath.py digests them.
UPSTREAM = {key: key[0].__dict__[key[1]] for key in _METHODS}
_installed: frozenset[str] = frozenset()
_no_ignore: tuple[type, ...] = ()   # set by install: the encryptions sent without MSG_IGNORE


def install(parts: frozenset[str] = PARTS) -> None:
    """Put the fast path in place, once. Only `sluis serve` calls this, with every part
    ("half-window" left out by `[limits] send_half_window = false`); a subset ("no-ignore" needs
    "packet", "half-window" needs "channel") serves to measure each part's effect (docs/sftp.md)."""
    global _installed, _no_ignore
    if _installed:
        return
    if "no-ignore" in parts:
        _no_ignore = _NO_IGNORE
    for alg, fast in _ENCRYPTIONS.items() if "ciphers" in parts else ():
        upstream, cipher_name = _encryption._enc_params[alg]
        if not issubclass(fast, upstream):
            raise RuntimeError(f"asyncssh registers {alg!r} as {upstream.__name__}; fastpath expects a base of {fast.__name__}")
        _encryption._enc_params[alg] = (fast, cipher_name)
    for part in sorted(parts & _PARTS.keys()):
        for owner, name in _PARTS[part]:
            setattr(owner, name, _METHODS[owner, name])
    fastchannel.hold_half_window("half-window" in parts and "channel" in parts)
    if "packet" in parts and "coalesce" not in parts:
        setattr(_connection.SSHConnection, "_send", _send_joined)   # as the parts above
    _installed = frozenset(parts)


def installed() -> frozenset[str]:
    """The parts in place (empty: none)."""
    return _installed

"""The receive side of the transport fast path (installed by server/sftp/fastpath.py, part "recv").

Upstream asyncssh 2.24 keeps the unread input in one bytes string and, for every packet, slices
off the first block, the rest and the MAC (copies) and then the remaining input (a copy of up to
the whole socket read, per packet); the cipher joins first block, rest and MAC again; the payload
is sliced out of the plaintext, wrapped in an SSHPacket, and channel data is sliced out of that.
Here the input is read at an offset (cut once per `_recv_data`, not per packet), the cipher reads
the packet's wire bytes in place (`open` in fastciphers.py), and MSG_CHANNEL_DATA goes from the
plaintext to the channel as a view: one copy from socket to channel instead of six or more.
Every other packet (kex, auth, channel requests, window adjusts) is dispatched by upstream's code,
copied here unchanged (`_dispatch`). tests/test_fastpath.py digests the upstream originals.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from asyncssh.constants import (
    MSG_CHANNEL_DATA, MSG_CHANNEL_FIRST, MSG_CHANNEL_LAST, MSG_DEBUG, MSG_IGNORE, MSG_KEX_FIRST,
    MSG_KEX_LAST, MSG_UNIMPLEMENTED, MSG_USERAUTH_FIRST, MSG_USERAUTH_LAST,
)
from asyncssh.misc import CompressionError, DisconnectError, MACError, ProtocolError
from asyncssh.packet import PacketDecodeError, SSHPacket, UInt32

# Smaller channel data is copied out rather than kept as a view: a view keeps its whole packet
# (up to 265 bytes of header and padding) and a memoryview object (184 bytes) alive, so a client
# sending 1-byte packets into a full channel window would hold some 400 times the window's worth
# of memory; from 1 KiB on, a view costs at most 1.5 times its data.
VIEW_MIN = 1024


def _recv_data(self: Any) -> None:
    """Replaces SSHConnection._recv_data: as upstream (parse while there is input and the current
    handler makes progress), then the consumed input is cut off once (`_fp_pos`), so the buffer
    holds only an incomplete packet between socket reads (and nothing for an idle connection)."""
    self._reset_keepalive_timer()
    try:
        while self._inpbuf and self._recv_handler():
            pass
    except DisconnectError as exc:
        self._send_disconnect(exc.code, exc.reason, exc.lang)
        self._force_close(exc)
    except Exception:
        self.internal_error()
    finally:
        pos = self.__dict__.get("_fp_pos")
        if pos:   # keep from the start of a packet whose rest has not arrived yet (`_fp_start`)
            start = self.__dict__.get("_fp_start")
            cut = pos if start is None else start
            self._inpbuf = self._inpbuf[cut:]
            self._fp_pos = pos - cut
            if start is not None:
                self._fp_start = 0


def _recv_pkthdr(self: Any) -> bool:
    """Replaces SSHConnection._recv_pkthdr, which slices the first block off the input (and the
    input off the block): here the block is read at the offset and the offset advanced. Header
    decryption, the packet length check and the hand-over to `_recv_packet` are upstream's."""
    buf = self._inpbuf
    pos = self.__dict__.get("_fp_pos", 0)
    size = self._recv_blocksize
    if len(buf) - pos < size:
        return False
    first = buf[pos:pos + size]
    self._fp_start = pos
    self._fp_pos = pos + size
    if self._recv_encryption:
        self._packet, pktlen = self._recv_encryption.decrypt_header(self._recv_seq, first, 4)
    else:
        self._packet, pktlen = first, first[:4]
    self._pktlen = int.from_bytes(pktlen, "big")
    if self._pktlen > self._max_recv_pktlen:
        raise ProtocolError("Max packet size exceeded")
    self._recv_handler = self._recv_packet
    return True


def _recv_packet(self: Any) -> bool:
    """Replaces SSHConnection._recv_packet: the packet is verified and decrypted from a view of
    the input (`open`), MSG_CHANNEL_DATA is delivered by `_channel_data`, anything else goes to
    `_dispatch` (upstream's code). Sequence numbers, MAC failure and compression are upstream's."""
    macsize = self._recv_macsize
    rem = 4 + self._pktlen + macsize - self._recv_blocksize
    buf, pos = self._inpbuf, self._fp_pos
    if len(buf) - pos < rem:
        return False
    seq = self._recv_seq
    encryption = self._recv_encryption
    opener = getattr(encryption, "open", None)
    if opener is not None:
        start = self._fp_start
        packet_data = opener(seq, memoryview(buf)[start:pos + rem], self._pktlen)
    elif encryption:
        packet_data = encryption.decrypt_packet(seq, self._packet, buf[pos:pos + rem - macsize], 4,
                                                buf[pos + rem - macsize:pos + rem])
    else:
        packet_data = self._packet[4:] + buf[pos:pos + rem - macsize]
    if not packet_data:
        raise MACError("MAC verification failed")
    self._fp_pos = pos + rem
    self._fp_start = None
    self._packet = b""

    if (len(packet_data) > 10 and packet_data[1] == MSG_CHANNEL_DATA and self._auth_complete
            and not self._decompressor and _channel_data(self, packet_data)):
        self._finish_recv_packet(MSG_CHANNEL_DATA, seq)
        return True
    return _dispatch(self, seq, packet_data[1:-packet_data[0]])


def _channel_data(self: Any, packet_data: bytes) -> bool:
    """MSG_CHANNEL_DATA straight to its channel (SSHChannel._process_data's checks, without the
    SSHPacket and its slices): the data is a view of the plaintext for a session that takes views
    (`accepts_views`, SluisSession) when it is VIEW_MIN bytes or more, bytes otherwise. False: let `_dispatch` handle the packet
    (unknown channel, malformed, logging at packet level), as upstream would."""
    padlen = packet_data[0]
    chan = self._channels.get(int.from_bytes(packet_data[2:6], "big"))
    size = int.from_bytes(packet_data[6:10], "big")
    if (chan is None or not padlen or 10 + size + padlen != len(packet_data) or chan._encoding
            or self.logger._debug_level >= 2 or not size):
        return False
    if chan._recv_state != "open":
        raise ProtocolError("Channel not open for sending")
    if size > chan._recv_window:
        raise ProtocolError("Window exceeded")
    if size >= VIEW_MIN and getattr(chan._session, "accepts_views", False):
        chan._accept_data(memoryview(packet_data)[10:10 + size])
    else:
        chan._accept_data(packet_data[10:10 + size])
    return True


def _dispatch(self: Any, seq: int, orig_payload: bytes) -> bool:
    """The rest of upstream SSHConnection._recv_packet, unchanged: decompression, the packet's
    handler by type and state (kex, auth, channel), strict-kex checks, logging, async handlers."""
    if self._decompressor and (self._auth_complete or not self._decompress_after_auth):
        payload = self._decompressor.decompress(orig_payload)
        if payload is None:
            raise CompressionError("Decompression failed")
    else:
        payload = orig_payload

    packet = SSHPacket(payload)
    pkttype = packet.get_byte()
    handler: Any = self
    skip_reason = ""
    exc_reason = ""

    if MSG_KEX_FIRST <= pkttype <= MSG_KEX_LAST:
        if self._kex:
            if self._ignore_first_kex:  # pragma: no cover
                skip_reason = "ignored first kex"
                self._ignore_first_kex = False
            else:
                handler = self._kex
        else:
            skip_reason = "kex not in progress"
            exc_reason = "Key exchange not in progress"
    elif self._strict_kex and not self._recv_encryption and MSG_IGNORE <= pkttype <= MSG_DEBUG:
        skip_reason = "strict kex violation"
        exc_reason = f"Strict key exchange violation: unexpected packet type {pkttype} received"
    elif MSG_USERAUTH_FIRST <= pkttype <= MSG_USERAUTH_LAST:
        if self._auth:
            handler = self._auth
        else:
            skip_reason = "auth not in progress"
            exc_reason = "Authentication not in progress"
    elif pkttype > MSG_KEX_LAST and not self._recv_encryption:
        skip_reason = "invalid request before kex complete"
        exc_reason = "Invalid request before key exchange was complete"
    elif pkttype > MSG_USERAUTH_LAST and not self._auth_complete:
        skip_reason = "invalid request before auth complete"
        exc_reason = "Invalid request before authentication was complete"
    elif MSG_CHANNEL_FIRST <= pkttype <= MSG_CHANNEL_LAST:
        try:
            recv_chan = packet.get_uint32()
        except PacketDecodeError:
            skip_reason = "incomplete channel request"
            exc_reason = "Incomplete channel request received"
        else:
            try:
                handler = self._channels[recv_chan]
            except KeyError:
                skip_reason = "invalid channel number"
                exc_reason = f"Invalid channel number {recv_chan} received"

    handler.log_received_packet(pkttype, seq, packet, skip_reason)

    if not skip_reason:
        try:
            result = handler.process_packet(pkttype, seq, packet)
        except PacketDecodeError as exc:
            raise ProtocolError(str(exc)) from None

        if inspect.isawaitable(result):
            # Buffer received data until current packet is processed
            self._recv_handler = lambda: False
            task = self.create_task(result)
            task.add_done_callback(functools.partial(self._finish_recv_packet, pkttype, seq, is_async=True))
            return False
        elif not result:
            if self._strict_kex and not self._recv_encryption:
                exc_reason = f"Strict key exchange violation: unexpected packet type {pkttype} received"
            else:
                self.logger.debug1("Unknown packet type %d received", pkttype)
                self.send_packet(MSG_UNIMPLEMENTED, UInt32(seq))

    if exc_reason:
        raise ProtocolError(exc_reason)

    self._finish_recv_packet(pkttype, seq)
    return True

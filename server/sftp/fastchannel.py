"""Channel data on the transport fast path (installed by server/sftp/fastpath.py, which lists
every override): asyncssh 2.24's SSHChannel write, flush and send_packet replaced, and how far a
download may run ahead of its client's window adjusts.

Half the window. RFC 4254 5.2 lets a sender fill the whole window its peer grants, and upstream
does. OpenSSH's client keeps whatever arrives for its sftp process in a buffer that it grows
by copying and shrinks again: with all of its 2 MiB window in flight, the client faulted in
about one fresh page per 4 KiB received (62,000 per 256 MiB), spent a quarter more CPU per byte,
and downloads ran at OpenSSH's own sftp-server's pace (docs/sftp.md, "Half the window"). So a
channel keeps at most half the largest window its client has granted, plus one packet,
unacknowledged. Clients adjust by the time half their window is used (OpenSSH after three
packets, PuTTY and asyncssh at half, paramiko at a tenth, Go at every read), so holding back
the rest never stalls them. A client that waits longer would: one that sends no adjust for
STALL seconds while data waits gets its whole window from then on, as upstream.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import asyncssh.channel as _channel
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_EOF, MSG_CHANNEL_EXTENDED_DATA
from asyncssh.packet import UInt32

from ..logsafe import quoted

STALL = 0.25   # seconds without a window adjust, data waiting, before a channel gets its whole window

_hold = False   # the "half-window" part: set by fastpath.install
log = logging.getLogger("sluis.sftp")


def hold_half_window(on: bool) -> None:
    """Whether channels opened from now on keep half their client's window (fastpath.install)."""
    global _hold
    _hold = on


@dataclass(slots=True)
class _Held:
    """What one channel holds back of its client's window (kept on the channel as `_fp_half`)."""

    largest: int = 0       # the largest window the client has granted
    held: int = 0          # granted, not yet usable: upstream's `_send_window` is the rest
    sent: int = 0          # bytes sent so far (a stall check sees whether any moved since)
    stall: asyncio.TimerHandle | None = None
    released: bool = False   # the client adjusted late once: its whole window from then on


def _hold_back(self: Any) -> _Held:
    """Hold back all but half the largest window the client has granted, plus one packet: at
    its first send, and whenever an adjust grants more than before. The usable part stays in
    upstream's `_send_window` (so every upstream check of it applies), the rest in `_Held.held`."""
    half = self.__dict__.get("_fp_half")
    if half is None:
        half = self._fp_half = _Held()
    granted = self._send_window + half.held
    if not half.released and granted > half.largest:
        half.largest = granted
        half.held = max(0, granted - granted // 2 - self._send_pktsize)
        self._send_window = granted - half.held
    return half


def _stalled(self: Any, half: _Held, sent_then: int) -> None:
    """STALL seconds after a send ran out of window: if nothing was sent since and data still
    waits, this client adjusts later than at half its window, and gets all of it from now on."""
    half.stall = None
    if self._send_state == "closed" or not half.held or not self._send_buf or self._send_window > 0:
        return
    if half.sent != sent_then:   # adjusts came meanwhile: look again later
        half.stall = self._loop.call_later(STALL, _stalled, self, half, half.sent)
        return
    log.info("window: user=%s from=%s sent no window adjust for %.2f s with %d bytes unacknowledged; "
             "it gets its whole window from now on", quoted(self.get_extra_info("username")),
             quoted(self.get_extra_info("peername", ("-",))[0]), STALL, half.largest - half.held)
    self._send_window += half.held
    half.held = 0
    half.released = True
    self._flush_send_buf()


def channel_pause_resume_writing(self: Any) -> None:
    """Replaces SSHChannel._pause_resume_writing: as upstream, except that a channel whose
    buffer drained does not resume its session while the transport itself is paused."""
    if self._send_paused:
        if self._send_buf_len <= self._send_low_water:
            self.logger.debug2("Writing from session resumed")
            self._send_paused = False
            if not self._conn.__dict__.get("_fp_transport_paused"):
                self._session.resume_writing()
    elif self._send_buf_len > self._send_high_water:
        self.logger.debug2("Writing from session paused")
        self._send_paused = True
        self._session.pause_writing()


def channel_write(self: Any, data: Any, datatype: Any = None) -> None:
    """Replaces SSHChannel.write, which copies every write into a bytearray (so it can `del`
    what was sent) and sends it at once, in packets of its own. Here bytes are kept as they are,
    behind a memoryview (other buffers are copied once into bytes); full packets go at once, and
    a shorter tail waits until the end of the loop iteration, so the next writes can share its
    packet (`_send_data`). Checks and logging are upstream's."""
    if self._send_state != "open":
        raise BrokenPipeError("Channel not open for sending")
    if datatype is not None and datatype not in self._write_datatypes:
        raise OSError("Invalid extended data type")
    if not data:
        return
    if self._encoding:
        data = self._encoder.encode(data)
    elif type(data) is not bytes:
        data = bytes(data)
    datalen = len(data)
    if self.logger._debug_level >= 2:   # upstream formats the line's arguments whatever the level
        self.logger.debug2("Sending %d data byte%s%s", datalen, "s" if datalen > 1 else "",
                           f" to {_channel._data_type_names[datatype]}" if datatype else "")
    self._send_buf.append((memoryview(data), datatype))
    self._send_buf_len += datalen
    if self._send_buf_len >= min(self._send_pktsize, self._send_window):   # a full packet is there
        _send_data(self, final=False)
    if self._send_buf and not self.__dict__.get("_fp_tail_scheduled"):
        self._fp_tail_scheduled = True
        self._loop.call_soon(_send_tail, self)
    self._pause_resume_writing()


def _send_data(self: Any, final: bool) -> None:
    """Send the buffered channel data as the window allows, in packets as full as it can make
    them: one packet may carry the end of one write and the start of the next, as OpenSSH's sshd
    does with its subsystem's output. Unless `final`, a last packet shorter than a full one is
    kept back: the SFTP replies of one loop iteration (PuTTY's 4 KiB writes get a 28-byte STATUS
    each; its 32 KiB reads a reply 13 bytes longer than two of its 16 KiB packets) then leave in
    a few full packets instead of one or two short ones each."""
    half: _Held | None = None
    if _hold:
        half = self.__dict__.get("_fp_half") or _hold_back(self)   # at the channel's first send
    send_buf = self._send_buf
    sent = 0
    while send_buf and self._send_window > 0:
        pktsize = min(self._send_window, self._send_pktsize)
        datatype = send_buf[0][1]
        pieces: list[Any] = []
        size = used = partial = 0
        for buf, kind in send_buf:
            if kind != datatype:
                break
            room = pktsize - size
            if len(buf) > room:   # the packet ends inside this piece
                pieces.append(buf[:room])
                size, partial = pktsize, room
                break
            pieces.append(buf)
            size += len(buf)
            used += 1
            if size == pktsize:
                break
        if size < pktsize and not final and used == len(send_buf):
            break   # a short tail: the next write (or the end of the iteration) sends it
        del send_buf[:used]
        if partial:
            buf, kind = send_buf[0]
            send_buf[0] = (buf[partial:], kind)
        self._send_buf_len -= size
        self._send_window -= size
        sent += size
        if datatype is None:
            self.send_packet(MSG_CHANNEL_DATA, UInt32(size), *pieces)
        else:
            self.send_packet(MSG_CHANNEL_EXTENDED_DATA, UInt32(datatype), UInt32(size), *pieces)
    if half is not None:
        half.sent += sent
        if send_buf and self._send_window <= 0 and half.held and half.stall is None:
            half.stall = self._loop.call_later(STALL, _stalled, self, half, half.sent)


def _send_tail(self: Any) -> None:
    """End of the loop iteration: what `channel_write` kept back goes now."""
    self._fp_tail_scheduled = False
    if self._send_buf and self._send_state != "closed":
        self._flush_send_buf()


def channel_flush_send_buf(self: Any) -> None:
    """Replaces SSHChannel._flush_send_buf (called on a window adjust, EOF and close), which
    slices a bytearray (a copy), deletes the sent part and wraps the data in String() (another
    copy): views are sliced, and the length and data go down as separate pieces, joined once
    when the packet is built. Everything the window allows is sent, a short tail included.
    With the half window in place, a grant beyond the largest so far moves what is held back."""
    if _hold:
        _hold_back(self)
    _send_data(self, final=True)

    self._pause_resume_writing()

    if not self._send_buf:
        if self._send_state == "eof_pending":
            self.send_packet(MSG_CHANNEL_EOF)
            self._send_state = "eof"
        elif self._send_state == "close_pending":
            self._close_send()


def channel_send_packet(self: Any, pkttype: int, *args: bytes) -> None:
    """Replaces SSHChannel.send_packet, which joins the channel number and the arguments into
    one payload (a copy of the data): the pieces go to the connection, which joins them once.
    Data kept back by `channel_write` goes first, so no other packet of the channel (a window
    adjust, exit-status, EOF, close) overtakes it."""
    if self._send_chan is None:  # pragma: no cover
        return
    if pkttype != MSG_CHANNEL_DATA and pkttype != MSG_CHANNEL_EXTENDED_DATA and self._send_buf:
        _send_data(self, final=True)
        self._pause_resume_writing()   # as after every send of buffered data
    self._conn.send_packet(pkttype, UInt32(self._send_chan), *args, handler=self)

"""The transport fast path (server/sftp/fastpath.py, fastciphers.py) against unpatched peers.

The test process never installs the fast path: its asyncssh is the unpatched peer. The fast
encryptions are checked byte for byte against asyncssh's own (same key, IV and sequence number
give the same wire bytes, and each side decrypts the other); coalesced writes against a
recording transport. The digests fail loudly when an asyncssh upgrade changes an internal the
fast path replaces or relies on. tests/test_fastpath_wire.py runs the server with real clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
from typing import Any, Iterator

import asyncssh
import pytest
from asyncssh import channel as upstream_channel
from asyncssh import connection as upstream_connection
from asyncssh import encryption as upstream_encryption
from asyncssh import mac as upstream_mac
from asyncssh import packet as upstream_packet
from asyncssh import stream as upstream_stream
from asyncssh.crypto import chacha as upstream_chacha
from asyncssh.crypto import cipher as upstream_cipher

from sluis.server.sftp import fastpath, fastrecv
from sluis.server.sftp.algorithms import ENCRYPTION, MACS


def digest(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


# --- tripwire: the asyncssh 2.24 internals the fast path replaces or relies on ------------------
# sha256 (first 16 hex digits) of each upstream source. When an upgrade changes one, re-read the
# override in server/sftp/fastpath.py that names it (and docs/sftp.md "Fast path"), then update.
REPLACED = {
    "SSHConnection.send_packet": "fb9da7bec6dd395a",       # MSG_IGNORE, packet build, seq, rekey
    "SSHConnection._send": "c6698a37eb80f574",             # one write per packet
    "SSHConnection._force_close": "264b4367525f4f86",      # flushed first
    "SSHConnection.pause_writing": "a69ec7dae4f504a2",     # a no-op upstream
    "SSHConnection.resume_writing": "a324675672f6b924",
    "SSHChannel._pause_resume_writing": "b05e507ca9fdeec9",
    "SSHChannel.write": "1045e20008469933",                # bytearray copy
    "SSHChannel._flush_send_buf": "3f11e9dc27c58b18",      # slices, String()
    "SSHChannel.send_packet": "00e81b763c8f3dd2",          # joined payload
    "SFTPHandler.send_packet": "0c22ab5cc5f282e9",         # reply built by two concatenations
    "SSHLogger.log": "508a0a50623f9179",                   # arguments made text before the level check
    "SSHConnection._recv_data": "fc4e0735191bb0fd",         # input cut once per read (fastrecv.py)
    "SSHConnection._recv_pkthdr": "7adc4d88fe20593c",       # first block sliced off the input
    "SSHConnection._recv_packet": "b3daa22e9763eee9",       # slices, joins; _dispatch copies its tail
}
RELIED_ON = {
    upstream_encryption.GCMEncryption: "d255f9e6b1fa73ee",
    upstream_encryption.ChachaEncryption: "5902581e97e59135",
    upstream_encryption.ETMEncryption: "ea0121ae1d035bc2",
    upstream_encryption.BasicEncryption: "15eeacf63ec90d6f",
    upstream_cipher.GCMCipher: "e389d2b5bed8eb41",
    upstream_chacha.ChachaCipher: "e678065d67f48c01",
    upstream_chacha.chacha20: "8fd99dfce8c7c885",
    upstream_chacha.poly1305_key: "c8627dfb53b0c702",
    upstream_mac._HMAC: "1de8e893cd46a29c",                # _key, _hash_alg, _hash_size, sign
    upstream_connection.SSHConnection.send_newkeys: "0b41234420373618",   # _send_enchdrlen/_blocksize
    upstream_connection.SSHConnection.data_received: "b2d14a83b2604db6",   # _inpbuf += data (fastrecv)
    upstream_connection.SSHConnection._finish_recv_packet: "e12d96db58b3524e",   # seq, handler reset
    upstream_channel.SSHChannel._process_data: "342490795c4b893c",   # the checks fastrecv._channel_data makes
    upstream_channel.SSHChannel._accept_data: "33121e9e185c9850",    # window, buffer while paused
    upstream_channel.SSHChannel.process_open: "6a3a551a99b6d76b",    # the client's window and packet size (fastchannel)
    upstream_channel.SSHChannel._process_window_adjust: "7a2e4c4998e0b496",   # += adjust, then _flush_send_buf
    upstream_packet.SSHPacketHandler.process_packet: "490a59d971d0ce03",  # a channel's dispatch by type
    upstream_stream.SSHStreamSession.pause_writing: "938c7d566804ea04",
    upstream_stream.SSHStreamSession.resume_writing: "879610913ac64f92",
}


def test_asyncssh_internals_fastpath() -> None:
    assert asyncssh.__version__.startswith("2.24."), asyncssh.__version__
    upstream = {f"{owner.__name__}.{name}": func for (owner, name), func in fastpath.UPSTREAM.items()}
    assert set(upstream) == set(REPLACED)
    changed = [name for name, func in upstream.items() if digest(func) != REPLACED[name]]
    changed += [getattr(obj, "__qualname__", str(obj)) for obj, want in RELIED_ON.items() if digest(obj) != want]
    assert not changed, f"asyncssh changed internals that server/sftp/fastpath.py overrides or relies on: {changed}"
    # Each fast encryption replaces the class asyncssh registers for that algorithm.
    for alg, fast in fastpath._ENCRYPTIONS.items():
        registered, _ = upstream_encryption._enc_params[alg]
        assert issubclass(fast, registered) and registered is not fast, alg
    # fastrecv._channel_data stands for what a channel does with MSG_CHANNEL_DATA: _process_data.
    assert upstream_channel.SSHChannel._packet_handlers[94] is upstream_channel.SSHChannel._process_data
    # Every cipher sluis offers is covered, so none of them gets the MSG_IGNORE-free path unsealed.
    assert {alg.encode() for alg in ENCRYPTION} == set(fastpath._ENCRYPTIONS)


# --- the fast encryptions against asyncssh's own, byte for byte -----------------------------------
CASES = [("chacha20-poly1305@openssh.com", ""), ("aes128-gcm@openssh.com", ""), ("aes256-gcm@openssh.com", ""),
         ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"), ("aes256-ctr", "hmac-sha2-512-etm@openssh.com")]


def encryptions(enc: str, mac: str) -> tuple[Any, Any, int]:
    """Makers of upstream and fast encryption objects that share one key, IV and MAC key, and
    the block size the connection reads first."""
    enc_b, mac_b = enc.encode(), mac.encode()
    key_size, iv_size, block_size, mac_key_size, _, etm = upstream_encryption.get_encryption_params(enc_b, mac_b)
    key, iv, mac_key = os.urandom(key_size), os.urandom(iv_size), os.urandom(mac_key_size)
    cipher_name = upstream_encryption._enc_params[enc_b][1]

    def upstream() -> Any:
        return upstream_encryption.get_encryption(enc_b, key, iv, mac_b, mac_key, etm)

    def fast() -> Any:
        made = fastpath._ENCRYPTIONS[enc_b].new(cipher_name, key, iv, mac_b, mac_key, etm)
        assert type(made).__name__.startswith("Fast"), type(made)
        return made
    return upstream, fast, max(8, block_size)


def packets() -> Iterator[tuple[int, bytes]]:
    """Packets as the connection builds them (padlen byte, payload, padding: a whole number of
    16-byte blocks), at sequence numbers up to the wrap."""
    for seq, blocks in zip((0, 1, 2, 7, 0xFFFFFFFE, 0xFFFFFFFF), (1, 2, 2049, 3, 63, 7)):
        yield seq, bytes([4]) + os.urandom(16 * blocks - 1)


def receive(dec: Any, seq: int, wire: bytes, block: int) -> bytes | None:
    """What SSHConnection._recv_pkthdr/_recv_packet do with one packet's wire bytes."""
    first, header = dec.decrypt_header(seq, wire[:block], 4)
    length = int.from_bytes(header[:4], "big")
    rest, mac = wire[block:4 + length], wire[4 + length:]
    return dec.decrypt_packet(seq, first, rest, 4, mac)


def receive_in_place(dec: Any, seq: int, wire: bytes, block: int) -> bytes | None:
    """What fastrecv._recv_pkthdr/_recv_packet do: the header as upstream, then `open` on a view
    of the whole packet inside a larger buffer (as the socket input is)."""
    _, header = dec.decrypt_header(seq, wire[:block], 4)
    length = int.from_bytes(header[:4], "big")
    buffer = b"junk" + wire + b"next packet"
    return dec.open(seq, memoryview(buffer)[4:4 + len(wire)], length)


@pytest.mark.parametrize("enc,mac", CASES, ids=[c[0] for c in CASES])
def test_fast_encryption_matches_upstream(enc: str, mac: str) -> None:
    upstream, fast, block = encryptions(enc, mac)
    send_up, send_fast, send_fast2, recv_up, recv_fast = upstream(), fast(), fast(), upstream(), fast()
    recv_open = fast()
    for seq, packet in packets():
        header = len(packet).to_bytes(4, "big")
        data, tag = send_up.encrypt_packet(seq, header, packet)
        sealed = b"".join(send_fast.seal(seq, header, packet))
        assert sealed == data + tag                                      # the same wire bytes
        assert send_fast2.encrypt_packet(seq, header, packet) == (data, tag)
        assert receive(recv_up, seq, sealed, block) == packet            # upstream reads the fast path's
        assert receive(recv_fast, seq, data + tag, block) == packet      # and the fast path upstream's
        assert receive_in_place(recv_open, seq, data + tag, block) == packet   # in place too


@pytest.mark.parametrize("enc,mac", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("where", ["length", "data", "tag"])
@pytest.mark.parametrize("receive", [receive, receive_in_place], ids=["decrypt_packet", "open"])
def test_fast_encryption_refuses_tampering(enc: str, mac: str, where: str, receive: Any) -> None:
    upstream, fast, block = encryptions(enc, mac)
    send, recv = upstream(), fast()
    packet = bytes([4]) + os.urandom(47)
    header = len(packet).to_bytes(4, "big")
    data, tag = send.encrypt_packet(5, header, packet)
    wire = bytearray(data + tag)
    wire[{"length": 3, "data": block + 1, "tag": -1}[where]] ^= 1
    assert receive(recv, 5, bytes(wire), block) is None


def test_aead_and_etm_are_the_ciphers_without_ignore() -> None:
    """MSG_IGNORE stays for encrypt-and-MAC (not offered) and goes for AEAD and encrypt-then-MAC."""
    assert all(mac.endswith("-etm@openssh.com") for mac in MACS)
    for enc, mac in CASES:
        upstream, fast, _ = encryptions(enc, mac)
        assert isinstance(upstream(), fastpath._NO_IGNORE) and isinstance(fast(), fastpath._NO_IGNORE)
    key = os.urandom(16)
    plain = upstream_encryption.get_encryption(b"aes128-ctr", key, os.urandom(16), b"hmac-sha2-256", os.urandom(32), False)
    assert not isinstance(plain, fastpath._NO_IGNORE)


# --- coalesced writes -----------------------------------------------------------------------------
class RecordingTransport:
    """A transport stand-in that records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writelines(self, pieces: list[bytes]) -> None:
        """One call, one write (uvloop: one writev)."""
        self.writes.append(b"".join(pieces))


class Conn:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport = RecordingTransport()


def test_one_write_per_loop_iteration_and_bounded() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = Conn(loop)
        fastpath._send(conn, b"a" * 10, b"b")
        fastpath._send(conn, b"c" * 5)
        assert conn._transport.writes == []                  # nothing yet: same iteration
        turned = loop.create_future()
        loop.call_soon(turned.set_result, None)               # runs after the flush callback
        await turned
        assert conn._transport.writes == [b"a" * 10 + b"b" + b"c" * 5]
        big = b"x" * (fastpath.COALESCE_LIMIT // 2)
        fastpath._send(conn, big)
        fastpath._send(conn, big)                              # reaches the limit: written now
        assert conn._transport.writes[1:] == [big + big]
        fastpath._send(conn, b"tail")
        fastpath._flush(conn)                                  # what _force_close does first
        assert conn._transport.writes[2:] == [b"tail"]
    asyncio.run(main())


# --- the receive side (fastrecv.py) against upstream-encrypted input, split every way ----------
class RecvChannel:
    """A channel stand-in: what fastrecv._channel_data reads and calls."""

    def __init__(self, views: bool) -> None:
        self._encoding = None
        self._recv_state = "open"
        self._recv_window = 1 << 30
        self._session = type("Session", (), {"accepts_views": views})()
        self.got: list[Any] = []

        self.dispatched: list[int] = []

    def _accept_data(self, data: Any) -> None:
        self.got.append(data)

    def log_received_packet(self, *args: Any) -> None:
        pass

    def process_packet(self, pkttype: int, seq: int, packet: Any) -> bool:
        """Upstream's SSHChannel._process_data would check and refuse what lands here."""
        self.dispatched.append(pkttype)
        return True


class RecvConn:
    """The SSHConnection state the receive path touches, with upstream's own `data_received` and
    `_finish_recv_packet` and the fast path's `_recv_data`, `_recv_pkthdr`, `_recv_packet`."""

    data_received = upstream_connection.SSHConnection.data_received
    _finish_recv_packet = upstream_connection.SSHConnection._finish_recv_packet
    _recv_data = fastrecv._recv_data
    _recv_pkthdr = fastrecv._recv_pkthdr
    _recv_packet = fastrecv._recv_packet
    logger = type("Logger", (), {"_debug_level": 0})()

    def __init__(self, encryption: Any, block: int, macsize: int, chan: RecvChannel) -> None:
        self._inpbuf = b""
        self._recv_handler = self._recv_pkthdr
        self._recv_encryption, self._recv_blocksize, self._recv_macsize = encryption, block, macsize
        self._recv_seq = 0
        self._max_recv_pktlen = 35000 + 1024
        self._auth_complete = self._transport = True
        self._decompressor = None
        self._strict_kex = False
        self._channels = {7: chan}
        self.ignored: list[bytes] = []
        self.closed: list[Exception] = []

    def _reset_keepalive_timer(self) -> None:
        pass

    def _send_disconnect(self, code: int, reason: str, lang: str) -> None:
        pass

    def _force_close(self, exc: Exception) -> None:
        self.closed.append(exc)
        self._inpbuf = b""

    def internal_error(self) -> None:  # pragma: no cover  (a bug: fail the test)
        raise

    def log_received_packet(self, *args: Any) -> None:
        pass

    def process_packet(self, pkttype: int, seq: int, packet: Any) -> bool:
        """MSG_IGNORE reaches here through fastrecv._dispatch (upstream's dispatch code)."""
        assert pkttype == 2
        self.ignored.append(packet.get_string())
        return True


def wire_packets(enc: Any, payloads: list[bytes], block: int) -> bytes:
    """Each payload padded as asyncssh's send_packet pads it (length not counted: AEAD and ETM),
    encrypted by `enc` at sequence numbers 0, 1, ..."""
    out = []
    for seq, payload in enumerate(payloads):
        padlen = -(1 + len(payload)) % block
        padlen += block if padlen < 4 else 0
        packet = bytes([padlen]) + payload + os.urandom(padlen)
        data, tag = enc.encrypt_packet(seq, len(packet).to_bytes(4, "big"), packet)
        out.append(data + tag)
    return b"".join(out)


def mac_size(enc: str, mac: str) -> int:
    return upstream_encryption.get_encryption_params(enc.encode(), mac.encode())[4]


def channel_data(data: bytes) -> bytes:
    return bytes([94]) + (7).to_bytes(4, "big") + len(data).to_bytes(4, "big") + data


@pytest.mark.parametrize("enc,mac", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("views", [True, False], ids=["views", "bytes"])
def test_receive_path_any_split(enc: str, mac: str, views: bool) -> None:
    """Channel data (and a packet for upstream's dispatch) arrives intact and in order however the
    socket splits the input: one byte at a time, odd sizes, all at once."""
    upstream, fast, block = encryptions(enc, mac)
    macsize = mac_size(enc, mac)
    messages = [os.urandom(n) for n in (1, 100, 32768, 5, 32768, 4000)]
    payloads = [channel_data(m) for m in messages[:3]] + [bytes([2]) + (3).to_bytes(4, "big") + b"ign"] + \
        [channel_data(m) for m in messages[3:]]
    for sizes in ([1], [7, 13, 4096], [1 << 20]):
        wire = wire_packets(upstream(), payloads, block)
        chan = RecvChannel(views)
        conn = RecvConn(fast(), block, macsize, chan)
        pos, i = 0, 0
        while pos < len(wire):
            step = sizes[i % len(sizes)]
            conn.data_received(wire[pos:pos + step])
            pos, i = pos + step, i + 1
        assert not conn.closed
        assert [bytes(d) for d in chan.got] == messages
        # Views only of data large enough that the packet around it costs little (fastrecv.VIEW_MIN).
        assert [type(d) for d in chan.got] == [memoryview if views and len(d) >= fastrecv.VIEW_MIN else bytes
                                               for d in chan.got]
        assert views == any(type(d) is memoryview for d in chan.got)
        assert conn.ignored == [b"ign"]
        assert conn._recv_seq == len(payloads) and conn._inpbuf == b""   # nothing held when idle


@pytest.mark.parametrize("enc,mac", CASES, ids=[c[0] for c in CASES])
def test_receive_path_refuses_tampering(enc: str, mac: str) -> None:
    upstream, fast, block = encryptions(enc, mac)
    macsize = mac_size(enc, mac)
    wire = bytearray(wire_packets(upstream(), [channel_data(b"x" * 300), channel_data(b"y" * 300)], block))
    wire[-40] ^= 1   # inside the second packet
    chan = RecvChannel(True)
    conn = RecvConn(fast(), block, macsize, chan)
    conn.data_received(bytes(wire))
    assert [bytes(d) for d in chan.got] == [b"x" * 300]
    assert len(conn.closed) == 1 and "MAC verification failed" in str(conn.closed[0])


@pytest.mark.parametrize("enc,mac", CASES[:2], ids=[c[0] for c in CASES[:2]])
def test_receive_path_leaves_odd_channel_data_to_upstream(enc: str, mac: str) -> None:
    """Channel data whose length field does not match the packet (trailing bytes, or short) or
    that is empty is not delivered by the fast path but dispatched as upstream does
    (SSHChannel._process_data then refuses it: check_end); an unknown channel ends the connection."""
    upstream, fast, block = encryptions(enc, mac)
    good = channel_data(b"ok")
    odd = [good + b"xx", good[:-1], channel_data(b"")]
    chan = RecvChannel(True)
    conn = RecvConn(fast(), block, mac_size(enc, mac), chan)
    conn.data_received(wire_packets(upstream(), [*odd, good], block))
    assert [bytes(d) for d in chan.got] == [b"ok"]
    assert chan.dispatched == [94, 94, 94]
    unknown = bytes([94]) + (8).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"ok"
    conn = RecvConn(fast(), block, mac_size(enc, mac), chan)
    conn.data_received(wire_packets(upstream(), [unknown], block))
    assert "Invalid channel number 8" in str(conn.closed[0])   # upstream's refusal, reached


# --- SFTP messages read without waiting (channel.py SluisSession.take) -----------------------------
class TakeChannel:
    """What SSHStreamSession.connection_made and reading ask of a channel."""

    def __init__(self, loop: asyncio.AbstractEventLoop, window: int) -> None:
        self._loop, self._window = loop, window
        self.paused = 0

    def get_connection(self) -> None:
        return None

    def get_encoding(self) -> tuple[None, str]:
        return None, "strict"

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def get_recv_window(self) -> int:
        return self._window

    def get_read_datatypes(self) -> set[None]:
        return {None}

    def get_write_datatypes(self) -> set[None]:
        return {None}

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.paused -= 1


def test_take_reads_what_is_buffered_as_read_would() -> None:
    from sluis.server.sftp.channel import SluisSession

    async def main() -> None:
        chan = TakeChannel(asyncio.get_running_loop(), window=100)
        session = SluisSession(lambda chan: None)  # type: ignore[arg-type,return-value]
        session.connection_made(chan)  # type: ignore[arg-type]
        stream = os.urandom(300)
        for start, end in ((0, 3), (3, 50), (50, 51), (51, 120)):   # views and bytes, as fastrecv hands them
            piece = stream[start:end]
            session.data_received(memoryview(piece) if start % 2 else piece, None)
        assert chan.paused == 1                              # 120 buffered > the 100-byte window
        head = session.take(4)
        assert head == stream[:4] and type(head) is bytes and chan.paused == 1
        assert session.take(60) == stream[4:64] and chan.paused == 0   # under the window: resumed
        assert session.take(57) is None                      # not all there: read() waits instead
        async with session._read_locks[None]:                # a read() in progress: leave it alone
            assert session.take(1) is None
        last = session.take(56)
        assert last == stream[64:120] and type(last) is bytes   # SSHPacket decodes strings: bytes, not views
        session.data_received(stream[120:200], None)
        session.connection_lost(ConnectionError("gone"))     # queued after the data, as upstream
        assert session.take(80) == stream[120:200]
        assert session.take(1) is None
        with pytest.raises(ConnectionError):
            await session.read(None, 1, True)                # the exception is still there for read()
    asyncio.run(main())

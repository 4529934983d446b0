"""The transport fast path (server/sftp/fastpath.py, fastciphers.py) against unpatched peers.

The test process never installs the fast path: its asyncssh, paramiko, OpenSSH and PuTTY are
the unpatched peers. The fast encryptions are checked byte for byte against asyncssh's own
(same key, IV and sequence number give the same wire bytes, and each side decrypts the other);
the server (`sluis serve`, which installs it) is checked with real clients per cipher, for the
absence of MSG_IGNORE on the wire as the client itself logs it, for flow control against a
client that stops reading, and for the event loop it runs. The digests fail loudly when an
asyncssh upgrade changes an internal the fast path replaces or relies on.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import asyncssh
import pytest
from asyncssh import connection as upstream_connection
from asyncssh import encryption as upstream_encryption
from asyncssh import mac as upstream_mac
from asyncssh import stream as upstream_stream
from asyncssh.crypto import chacha as upstream_chacha
from asyncssh.crypto import cipher as upstream_cipher

from sluis.server.service import event_loop_factory, loop_name
from sluis.server.sftp import fastpath
from sluis.server.sftp.algorithms import ENCRYPTION, MACS
from tests.support.clients import require_binary
from tests.support.clients_extra import TIMEOUT, blob, decrypt_file, env_without_agent
from tests.support.raw_sftp import FXF_READ, INIT, RawSFTP, proc_status, string, u32
from tests.support.raw_sftp import connect as raw_connect
from tests.support.server import SSH_OPTIONS, SluisServer
from tests.support.waiting import wait_until


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
    upstream_connection.SSHConnection._recv_packet: "b3daa22e9763eee9",   # decrypt_packet(seq, first, rest, 4, mac)
    upstream_connection.SSHConnection._recv_pkthdr: "7adc4d88fe20593c",   # decrypt_header
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


@pytest.mark.parametrize("enc,mac", CASES, ids=[c[0] for c in CASES])
def test_fast_encryption_matches_upstream(enc: str, mac: str) -> None:
    upstream, fast, block = encryptions(enc, mac)
    send_up, send_fast, send_fast2, recv_up, recv_fast = upstream(), fast(), fast(), upstream(), fast()
    for seq, packet in packets():
        header = len(packet).to_bytes(4, "big")
        data, tag = send_up.encrypt_packet(seq, header, packet)
        sealed = b"".join(send_fast.seal(seq, header, packet))
        assert sealed == data + tag                                      # the same wire bytes
        assert send_fast2.encrypt_packet(seq, header, packet) == (data, tag)
        assert receive(recv_up, seq, sealed, block) == packet            # upstream reads the fast path's
        assert receive(recv_fast, seq, data + tag, block) == packet      # and the fast path upstream's


@pytest.mark.parametrize("enc,mac", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("where", ["length", "data", "tag"])
def test_fast_encryption_refuses_tampering(enc: str, mac: str, where: str) -> None:
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


# --- the server, with real unpatched clients ------------------------------------------------------
def sftp(server: SluisServer, user: str, script: str, *options: str) -> str:
    result = subprocess.run(["sftp", "-b", "-", "-i", str(server.accounts[user].key), "-P", str(server.port),
                             *SSH_OPTIONS, *options, f"{user}@127.0.0.1"], input=script, text=True,
                            capture_output=True, timeout=TIMEOUT, env=env_without_agent())
    assert result.returncode == 0, f"sftp {options} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


OPENSSH = [("chacha20-poly1305@openssh.com", "hmac-sha2-256-etm@openssh.com"),
           ("aes128-gcm@openssh.com", "hmac-sha2-256-etm@openssh.com"),
           ("aes256-gcm@openssh.com", "hmac-sha2-256-etm@openssh.com"),
           ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
           ("aes256-ctr", "hmac-sha2-512-etm@openssh.com")]


def test_server_runs_the_fast_path(server: SluisServer) -> None:
    line = server.wait_for(r"sluis listening on .*transport fast path: ([a-z,-]+)\)")
    assert set(line.group(1).split(",")) == fastpath.PARTS


@pytest.mark.parametrize("enc,mac", OPENSSH, ids=[c[0] for c in OPENSSH])
def test_openssh_each_cipher_byte_for_byte(server: SluisServer, tmp_path: Path, enc: str, mac: str) -> None:
    """Upload and download (several MiB: many packets, window adjusts, coalesced writes), with
    the client rekeying every MiB (new fast cipher objects, strict-kex sequence resets)."""
    require_binary("sftp")
    data = blob(3 * 1024 * 1024 + 12345, seed=len(enc))
    src = tmp_path / "lijst.bin"
    src.write_bytes(data)
    opts = ("-o", f"Ciphers={enc}", "-o", f"MACs={mac}", "-o", "RekeyLimit=1M")
    sftp(server, "agency", f"put {src} /genk/lijst.bin\n", *opts)
    got = tmp_path / "got.age"
    sftp(server, "genk-clerk", f"get lijst.bin.age {got}\n", *opts)
    assert decrypt_file(got, server.passphrase("lijst.bin.age")) == data


def test_psftp_byte_for_byte(server: SluisServer, tmp_path: Path) -> None:
    """PuTTY's own choice (aes256-ctr with hmac-sha2-256-etm here), 16 KiB channel packets."""
    require_binary("psftp")
    require_binary("puttygen")
    data = blob(3 * 1024 * 1024 + 777, seed=9)
    src = tmp_path / "lijst.bin"
    src.write_bytes(data)
    got = tmp_path / "got.age"
    for user, script in (("agency", f"put {src} /genk/lijst.bin\n"), ("genk-clerk", f"get lijst.bin.age {got}\n")):
        batch = tmp_path / f"{user}.txt"
        batch.write_text(script)
        result = subprocess.run(["psftp", "-batch", "-bc", "-b", str(batch), "-P", str(server.port), "-noagent",
                                 "-i", str(server.accounts[user].ppk()), "-hostkey", server.host_key_fingerprint(),
                                 f"{user}@127.0.0.1"], capture_output=True, text=True, timeout=TIMEOUT,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stdout + result.stderr
    assert decrypt_file(got, server.passphrase("lijst.bin.age")) == data


PARAMIKO = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr"]


@pytest.mark.parametrize("enc", PARAMIKO)
def test_paramiko_each_cipher_byte_for_byte(server: SluisServer, enc: str) -> None:
    import paramiko

    if enc not in paramiko.Transport._preferred_ciphers:
        pytest.skip(f"this paramiko has no {enc}")
    data = blob(2 * 1024 * 1024 + 3, seed=3)

    def client(user: str) -> tuple[Any, Any]:
        transport = paramiko.Transport(("127.0.0.1", server.port))
        transport.get_security_options().ciphers = (enc,)
        transport.get_security_options().digests = ("hmac-sha2-256-etm@openssh.com",)
        transport.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(str(server.accounts[user].key)))
        assert transport.remote_cipher == enc
        return transport, paramiko.SFTPClient.from_transport(transport)

    transport, client_ = client("agency")
    try:
        with client_.open("/genk/p.bin", "wb") as handle:
            handle.set_pipelined(True)
            handle.write(data)
    finally:
        transport.close()
    transport, client_ = client("genk-clerk")
    try:
        with client_.open("/p.bin.age", "rb") as handle:
            stored = handle.read()
    finally:
        transport.close()
    from tests.support.clients_extra import decrypt_bytes
    assert decrypt_bytes(stored, server.passphrase("p.bin.age")) == data


class PacketCounter(logging.Handler):
    """Counts the packets an (unpatched) asyncssh client logs as received, by name."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.received: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"\bReceived (MSG_[A-Z_]+) \(", record.getMessage())
        if found:
            self.received[found.group(1)] = self.received.get(found.group(1), 0) + 1


@pytest.fixture
def packet_log() -> Iterator[PacketCounter]:
    counter = PacketCounter()
    logger = logging.getLogger("asyncssh")
    level = logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    asyncssh.set_debug_level(3)
    try:
        yield counter
    finally:
        asyncssh.set_debug_level(1)
        logger.setLevel(level)
        logger.removeHandler(counter)


@pytest.mark.parametrize("enc,mac", [OPENSSH[0], OPENSSH[1], OPENSSH[3]], ids=["chacha", "gcm", "ctr-etm"])
def test_no_ignore_packets_on_the_wire(server: SluisServer, packet_log: PacketCounter, enc: str, mac: str) -> None:
    """An unpatched asyncssh client downloads 1 MiB and logs each packet it receives: many
    MSG_CHANNEL_DATA and not one MSG_IGNORE (upstream sends one before every packet)."""
    data = blob(1024 * 1024, seed=5)

    async def main() -> bytes:
        async with await raw_connect(server, "agency", encryption_algs=[enc], mac_algs=[mac]) as conn:
            async with conn.start_sftp_client() as client:
                async with client.open("/genk/w.bin", "wb") as handle:
                    await handle.write(data)
        packet_log.received.clear()
        async with await raw_connect(server, "genk-clerk", encryption_algs=[enc], mac_algs=[mac]) as conn:
            async with conn.start_sftp_client() as client:
                async with client.open("/w.bin.age", "rb") as handle:
                    return await handle.read()
    stored = asyncio.run(asyncio.wait_for(main(), 60))
    from tests.support.clients_extra import decrypt_bytes
    assert decrypt_bytes(stored, server.passphrase("w.bin.age")) == data
    assert packet_log.received.get("MSG_CHANNEL_DATA", 0) >= 32, packet_log.received
    assert packet_log.received.get("MSG_IGNORE", 0) == 0, packet_log.received


def test_replies_wait_for_a_client_that_stops_reading(server: SluisServer) -> None:
    """A client that opens a 2 GiB channel window (as PuTTY does) and stops reading the socket
    while it sends 1000 READs of 255 KiB: the server's transport pauses and its sessions wait,
    instead of buffering 255 MB of replies; once the client reads again every reply arrives."""
    data = blob(600 * 1024, seed=7)
    assert server.process is not None
    pid = server.process.pid
    count = 1000

    async def main() -> tuple[int, int]:
        async with await raw_connect(server, "agency") as conn, conn.start_sftp_client() as client:
            async with client.open("/genk/big.bin", "wb") as handle:
                await handle.write(data)
        async with await raw_connect(server, "genk-clerk") as conn:
            writer, reader, _ = await conn.open_session(subsystem="sftp", encoding=None, window=2**31 - 1)
            raw = RawSFTP(writer, reader)
            raw.send_bytes(u32(5) + bytes([INIT]) + u32(3))
            await raw.read_reply()
            handle = (await raw.open_file("/big.bin.age", FXF_READ)).handle
            start = proc_status(pid)["VmHWM"]
            conn._transport.pause_reading()   # the client stops reading its socket
            for _ in range(count):
                raw.send(5, string(handle) + (0).to_bytes(8, "big") + u32(255 * 1024))
            await raw.writer.drain()
            # Without flow control the server would now fill its transport buffer: give it the
            # chance (bounded), then expect that it did not.
            grew = await asyncio.to_thread(
                lambda: _grows(pid, start + 96 * 1024))
            conn._transport.resume_reading()
            for _ in range(count):
                assert len((await raw.read_reply()).data) == 255 * 1024
            return grew, proc_status(pid)["VmHWM"] - start
    grew, peak = asyncio.run(asyncio.wait_for(main(), 120))
    assert not grew and peak < 96 * 1024, (grew, peak)   # KiB


def _grows(pid: int, limit_kib: int) -> bool:
    try:
        wait_until(lambda: proc_status(pid)["VmHWM"] > limit_kib, "server memory growth", 5)
    except AssertionError:
        return False
    return True


# --- the event loop -------------------------------------------------------------------------------
def test_uvloop_when_installed(server: SluisServer) -> None:
    uvloop = pytest.importorskip("uvloop")
    assert event_loop_factory() is uvloop.new_event_loop
    server.wait_for(rf"event loop: uvloop {uvloop.__version__};")


def test_standard_loop_without_uvloop(make_server: Any, tmp_path: Path) -> None:
    """uvloop hidden (an import of it fails): the standard loop runs, and transfers work."""
    hide = tmp_path / "hide"
    (hide / "uvloop").mkdir(parents=True)
    (hide / "uvloop" / "__init__.py").write_text("raise ImportError('uvloop hidden by the test')\n")
    path = os.pathsep.join(p for p in (str(hide), os.environ.get("PYTHONPATH", "")) if p)
    server = make_server(env={"PYTHONPATH": path}).standard().start()
    server.wait_for(r"event loop: asyncio;")
    data = blob(512 * 1024, seed=11)
    src = tmp_path / "l.bin"
    src.write_bytes(data)
    sftp(server, "agency", f"put {src} /genk/l.bin\n")
    got = tmp_path / "got.age"
    sftp(server, "genk-clerk", f"get l.bin.age {got}\n")
    assert decrypt_file(got, server.passphrase("l.bin.age")) == data


def test_loop_name() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert loop_name(loop) == "asyncio"
    finally:
        loop.close()

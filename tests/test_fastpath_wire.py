"""The server's transport fast path with real, unpatched clients (tests/test_fastpath.py has the
unit half): every cipher byte for byte with OpenSSH (rekeying), psftp and paramiko; no MSG_IGNORE
on the wire as the client itself logs it; flow control against a client that stops reading; the
event loop it runs on (uvloop when installed, asyncio's otherwise).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import asyncssh
import pytest

from sluis.server.service import event_loop_factory, loop_name
from sluis.server.sftp import fastpath
from tests.support.clients import require_binary
from tests.support.clients_extra import TIMEOUT, blob, decrypt_bytes, decrypt_file, env_without_agent
from tests.support.raw_sftp import (
    FX_OK, FXF_CREAT, FXF_READ, FXF_TRUNC, FXF_WRITE, INIT, WRITE, RawSFTP, proc_status, string, u32, u64,
)
from tests.support.raw_sftp import connect as raw_connect
from tests.support.server import SSH_OPTIONS, SluisServer
from tests.support.waiting import wait_until


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
    psftp(server, "agency", f"put {src} /genk/lijst.bin\n", tmp_path)
    psftp(server, "genk-clerk", f"get lijst.bin.age {got}\n", tmp_path)
    assert decrypt_file(got, server.passphrase("lijst.bin.age")) == data


def psftp(server: SluisServer, user: str, script: str, tmp_path: Path) -> None:
    batch = tmp_path / f"{user}.txt"
    batch.write_text(script)
    result = subprocess.run(["psftp", "-batch", "-bc", "-b", str(batch), "-P", str(server.port), "-noagent",
                             "-i", str(server.accounts[user].ppk()), "-hostkey", server.host_key_fingerprint(),
                             f"{user}@127.0.0.1"], capture_output=True, text=True, timeout=TIMEOUT,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr


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
    assert decrypt_bytes(stored, server.passphrase("w.bin.age")) == data
    assert packet_log.received.get("MSG_CHANNEL_DATA", 0) >= 32, packet_log.received
    assert packet_log.received.get("MSG_IGNORE", 0) == 0, packet_log.received


def test_pipelined_replies_share_channel_packets(server: SluisServer, packet_log: PacketCounter) -> None:
    """256 WRITEs of 4 KiB sent at once, as PuTTY pipelines them, one of them to a handle that is
    not open: 256 replies in order, that one with upstream's error status, and the OK statuses
    of the requests answered in one loop iteration share channel packets, as sshd packs its
    subsystem's output (upstream sent a packet per reply). The refused write sent again, the
    upload publishes whole."""
    data = blob(256 * 4096, seed=11)

    async def main() -> tuple[list[Any], int, bytes]:
        async with await raw_connect(server, "agency") as conn:
            raw = await RawSFTP.open(conn)
            handle = (await raw.open_file("/genk/pipelined.bin", FXF_WRITE | FXF_CREAT | FXF_TRUNC)).handle
            packet_log.received.clear()
            # One write of all 256 requests: they arrive packed in full SSH packets, as under
            # load, so the server has several to answer in one loop iteration.
            bodies = [string(b"not-open" if n == 100 else handle) + u64(n * 4096) + string(data[n * 4096:(n + 1) * 4096])
                      for n in range(256)]
            ids = list(range(raw.next_id, raw.next_id + 256))
            raw.next_id += 256
            raw.send_bytes(b"".join(u32(5 + len(body)) + bytes([WRITE]) + u32(pktid) + body
                                    for pktid, body in zip(ids, bodies)))
            replies = [await raw.read_reply() for _ in ids]
            packets = packet_log.received.get("MSG_CHANNEL_DATA", 0)
            assert [reply.id for reply in replies] == ids
            assert (await raw.write(handle, 100 * 4096, data[100 * 4096:101 * 4096])).code == FX_OK
            assert (await raw.close(handle)).code == FX_OK
        async with await raw_connect(server, "genk-clerk") as conn:
            async with conn.start_sftp_client() as client:
                async with client.open("/pipelined.bin.age", "rb") as download:
                    return replies, packets, await download.read()
    replies, packets, stored = asyncio.run(asyncio.wait_for(main(), 60))
    assert [n for n, reply in enumerate(replies) if reply.code != FX_OK] == [100]
    assert "handle" in replies[100].message.lower(), replies[100]
    assert packets <= 64, packets
    assert decrypt_bytes(stored, server.passphrase("pipelined.bin.age")) == data


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


# --- half the window (server/sftp/fastchannel.py) --------------------------------------------------
def _download_paused(server: SluisServer, window: int, size: int) -> tuple[bytes, re.Match[str] | None]:
    """Upload `size` bytes; then a client opens a `window`-byte channel, asks for the whole file
    in 32 KiB READs and takes no data (so it sends no window adjust) until the server logs that
    it gave that client its whole window, or for at most 3 s; then reads every reply."""
    data = blob(size, seed=window % 251)
    pattern = r'window: user="genk-clerk" from="127\.0\.0\.1" sent no window adjust .* with (\d+) bytes unacknowledged'

    async def main() -> tuple[bytes, re.Match[str] | None]:
        async with await raw_connect(server, "agency") as conn, conn.start_sftp_client() as client:
            async with client.open("/genk/late.bin", "wb") as handle:
                await handle.write(data)
        async with await raw_connect(server, "genk-clerk") as conn:
            async with conn.start_sftp_client() as client:
                stored_size = (await client.stat("/late.bin.age")).size
            writer, reader, _ = await conn.open_session(subsystem="sftp", encoding=None, window=window)
            raw = RawSFTP(writer, reader)
            raw.send_bytes(u32(5) + bytes([INIT]) + u32(3))
            await raw.read_reply()
            handle = (await raw.open_file("/late.bin.age", FXF_READ)).handle
            writer.channel.pause_reading()   # data stays in the client's channel: no adjust goes out
            offsets = range(0, stored_size, 32768)
            for offset in offsets:
                raw.send(5, string(handle) + u64(offset) + u32(32768))
            try:
                line = await asyncio.to_thread(server.wait_for, pattern, 3)
            except AssertionError:
                line = None
            writer.channel.resume_reading()
            stored = b"".join([(await raw.read_reply()).data for _ in offsets])
            return stored, line
    stored, line = asyncio.run(asyncio.wait_for(main(), 60))
    assert decrypt_bytes(stored, server.passphrase("late.bin.age")) == data
    return stored, line


def test_half_the_window_then_all_of_it_for_a_client_that_adjusts_late(server: SluisServer) -> None:
    """A client that sends no adjust: the server sends half its 1 MiB window plus one packet
    (asyncssh's 32 KiB), waits, gives it the whole window (logged once), and the download
    completes intact. Without the hold-back no line; without the release the client would wait
    forever (as an asyncssh client did against a fixed 512 KiB cap)."""
    _, line = _download_paused(server, 1024 * 1024, 3 * 1024 * 1024)
    assert line is not None, "no release logged"
    assert int(line.group(1)) == 512 * 1024 + 32768
    assert len(re.findall(r"sent no window adjust", server.log)) == 1


def test_the_whole_window_when_send_half_window_is_off(make_server: Any) -> None:
    """`[limits] send_half_window = false`: the part is not installed, and a client that takes
    no data gets its whole window at once: no release is ever needed, none is logged."""
    server = make_server({"limits": {"send_half_window": False}}).standard().start()
    line = server.wait_for(r"sluis listening on .*transport fast path: ([a-z,-]+)\)")
    assert set(line.group(1).split(",")) == fastpath.PARTS - {"half-window"}
    _, released = _download_paused(server, 1024 * 1024, 3 * 1024 * 1024)
    assert released is None


def test_clients_that_adjust_at_half_never_wait(server: SluisServer, tmp_path: Path) -> None:
    """OpenSSH (adjusts after three packets), PuTTY psftp and asyncssh (at half) and paramiko (at
    a tenth) download 8 MiB through the held-back window without one release."""
    require_binary("sftp")
    require_binary("psftp")
    require_binary("puttygen")
    data = blob(8 * 1024 * 1024, seed=17)
    src = tmp_path / "acht.bin"
    src.write_bytes(data)
    sftp(server, "agency", f"put {src} /genk/acht.bin\n")
    got = tmp_path / "got.age"
    sftp(server, "genk-clerk", f"get acht.bin.age {got}\n")
    via_psftp = tmp_path / "psftp.age"
    psftp(server, "genk-clerk", f"get acht.bin.age {via_psftp}\n", tmp_path)

    async def fetch() -> bytes:
        async with await raw_connect(server, "genk-clerk") as conn, conn.start_sftp_client() as client:
            async with client.open("/acht.bin.age", "rb") as handle:
                return await handle.read()
    via_asyncssh = asyncio.run(asyncio.wait_for(fetch(), 60))
    import paramiko
    transport = paramiko.Transport(("127.0.0.1", server.port))
    try:
        transport.connect(username="genk-clerk",
                          pkey=paramiko.Ed25519Key.from_private_key_file(str(server.accounts["genk-clerk"].key)))
        with paramiko.SFTPClient.from_transport(transport) as client, client.open("/acht.bin.age", "rb") as handle:
            handle.prefetch()
            via_paramiko = handle.read()
    finally:
        transport.close()
    assert got.read_bytes() == via_psftp.read_bytes() == via_asyncssh == via_paramiko
    assert decrypt_bytes(via_paramiko, server.passphrase("acht.bin.age")) == data
    assert "sent no window adjust" not in server.log


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

"""The [limits] caps after login, one test each, against a real `sluis serve` and a raw SFTP
client (tests/support/raw_sftp.py): channels per connection, open handles and uploads per
session, 256 KiB messages and READs (advertised in limits@openssh.com), reply backpressure, the
key-derivation pool; a CLOSE that is never OK unless the upload was published (the shared
reorder budget running out between two real senders); reads through a handle whose file was
removed or replaced; scattered reads capped per file; and a tripwire on every asyncssh
internal that server/sftp/channel.py overrides."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import itertools
from typing import Any, Awaitable, Iterator

import asyncssh
import pytest
from asyncssh import sftp as upstream_sftp
from asyncssh import logging as upstream_logging
from asyncssh import packet as upstream_packet
from asyncssh import stream as upstream_stream
from asyncssh.packet import String, UInt32

from sluis.config.settings import LimitSettings
from sluis.server.core.coverage import MAX_RANGES
from sluis.server.sftp import channel
from sluis.server.sftp.limits import MAX_BREACHES, max_read
from tests.support.clients_extra import audit, blob, data_files, deliveries, uploads, wait_audit, wait_until
from tests.support.raw_sftp import (
    DATA, FX_FAILURE, FX_NO_SUCH_FILE, FX_OK, FXF_CREAT, FXF_READ, FXF_TRUNC, FXF_WRITE, HANDLE, READ,
    RawSFTP, connect, proc_status, string, u32, u64,
)
from tests.support.server import SluisServer

DEFAULTS = LimitSettings()
MAX_READ = max_read(DEFAULTS)
_names = itertools.count()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluisServer]:
    server = SluisServer(tmp_path_factory.mktemp("limits"), {
        "upload": {"window": "1MiB", "total_window": "512KiB"},
        "policy": {"yearly_limit": 366},
    }).standard()
    server.add_user("agency2", "sender")
    server.start()
    try:
        yield server
    finally:
        server.close()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def new_tenant(server: SluisServer) -> tuple[str, str]:
    """A fresh municipality with its recipient, so that tests do not share a waiting list."""
    name = f"t{next(_names)}"
    server.add_tenant(name)
    server.add_user(f"{name}-clerk", "recipient", name)
    return name, f"{name}-clerk"


async def publish(server: SluisServer, tenant: str, name: str, data: bytes, user: str = "agency") -> str:
    async with await connect(server, user) as conn, conn.start_sftp_client() as client:
        async with client.open(f"/{tenant}/{name}", "wb") as handle:
            await handle.write(data)
    return f"{name}.age"


def limit_records(server: SluisServer, limit: str) -> list[dict[str, Any]]:
    return [r for r in audit(server, "sftp.limit") if r["detail"]["limit"] == limit]


# --- the asyncssh internals channel.py relies on ---------------------------------------------
# sha256 (first 16 hex digits) of the source of each upstream function that sluis replaces or
# whose behaviour an override depends on (asyncssh 2.24.1). When an upgrade changes one, re-read
# the override named beside it in server/sftp/channel.py, then update the digest.
UPSTREAM = {
    (upstream_sftp.SFTPHandler, "recv_packet"): "d811faaea31cc51c",          # recv_packet: size cap
    (upstream_sftp.SFTPHandler, "recv_packets"): "f1c5fb1ba31b4800",         # one request at a time
    # drain after reply; a WRITE's OK answered by channel.py, its failure replayed (REPLAY)
    (upstream_sftp.SFTPServerHandler, "_process_packet"): "4e7c6b60e5c9dd26",
    (upstream_sftp.SFTPServerHandler, "_process_open"): "de593bd0384f9f49",    # handle cap
    (upstream_sftp.SFTPServerHandler, "_process_write"): "8057f08f13ae0d06",   # lenient write
    (upstream_sftp.SFTPServerHandler, "_process_read"): "bb3d2d0ec3f55fed",    # quiet read
    (upstream_sftp.SFTPServerHandler, "_process_opendir"): "edbe8f8a79909dda",  # listed at open
    (upstream_sftp.SFTPServerHandler, "_process_limits"): "62a6a3cb0ec8ec7c",   # our limits
    (upstream_sftp.SFTPServerHandler, "_cleanup"): "620706aba4753e82",          # exit status
    (upstream_sftp.SFTPServerHandler, "_get_next_handle"): "0ca44c9cb2fe52b1",
    (upstream_sftp.SFTPServerHandler, "run"): "3da2d6cb349ee98f",               # INIT, version 3
    (upstream_stream.SSHServerStreamSession, "__init__"): "48f259794f420d0b",
    (upstream_stream.SSHServerStreamSession, "session_started"): "9baa3d185c0a7fb2",
    (upstream_stream.SSHStreamSession, "connection_lost"): "c015e4ebb89ef401",  # channel count
    (upstream_stream.SSHStreamSession, "drain"): "1be6dae580164576",
    # SluisSession.take: the receive buffer it reads as read() does (pieces, length, lock, resume)
    (upstream_stream.SSHStreamSession, "read"): "595142239a785afb",
    (upstream_stream.SSHStreamSession, "data_received"): "7a6181d076246336",
    (upstream_stream.SSHStreamSession, "_maybe_resume_reading"): "eb4ce0e4ccc96fb5",
    # log_received_packet: formats its line only at debug level 3 (logger.packet's own check)
    (upstream_packet.SSHPacketLogger, "_log_packet"): "f3263d7da93663f1",
    (upstream_logging.SSHLogger, "packet"): "a4baf6329fa97dcf",
    # _process_write_lenient: the whole message, to take the write's data as a view of it
    (upstream_packet.SSHPacket, "get_full_payload"): "6ecec7037a0f5d47",
}


def test_asyncssh_internals() -> None:
    changed = [f"{cls.__name__}.{name}" for (cls, name), digest in UPSTREAM.items()
               if hashlib.sha256(inspect.getsource(getattr(cls, name)).encode()).hexdigest()[:16] != digest]
    assert not changed, f"asyncssh changed internals that server/sftp/channel.py overrides: {changed}"
    # The overrides rest on these facts too: requests are answered one at a time (so one reply is
    # in flight per session), and the upstream caps are the ones channel.py replaces.
    assert "await self._process_packet(pkttype, pktid, packet)" in inspect.getsource(
        upstream_sftp.SFTPHandler.recv_packets)
    assert upstream_sftp.MAX_SFTP_PACKET_LEN > DEFAULTS.max_message
    # channel.py answers a successful WRITE with upstream's OK reply, and has upstream answer a
    # failed one by dispatching REPLAY, which upstream looks up like any request type.
    source = inspect.getsource(upstream_sftp.SFTPServerHandler._process_packet)
    assert "response = UInt32(FX_OK) + String('') + String('')" in source
    assert "handler = self._packet_handlers.get(handler_type)" in source
    # ... and a successful READ with upstream's DATA reply (version 3: no end flag).
    assert "response = String(data) + end" in source
    assert "end = Boolean(at_end) if at_end and self._version >= 6 else b''" in source
    assert channel.OK_STATUS == UInt32(FX_OK) + String("") + String("")
    assert set(upstream_sftp.SFTPServerHandler._packet_handlers) >= {
        upstream_sftp.FXP_OPEN, upstream_sftp.FXP_WRITE, b"limits@openssh.com"}


# --- sizes -------------------------------------------------------------------------------------
def test_limits_reply_and_short_read(shared: SluisServer) -> None:
    tenant, clerk = new_tenant(shared)
    data = blob(700 * 1024, seed=1)
    stored = run(publish(shared, tenant, "big.bin", data))

    async def main() -> None:
        async with await connect(shared, clerk) as conn:
            raw = await RawSFTP.open(conn)
            reply = await raw.extended(b"limits@openssh.com")
            values = [int.from_bytes(reply.body[i:i + 8], "big") for i in range(0, 32, 8)]
            assert values == [256 * 1024, 255 * 1024, 255 * 1024, DEFAULTS.handles_per_session]
            handle = (await raw.open_file(f"/{stored}", FXF_READ)).handle
            huge = await raw.read(handle, 0, 0xFFFFFFFF)
            assert len(huge.data) == MAX_READ == 261120   # at most the cap: a legal short read
            assert (await raw.close(handle)).code == FX_OK
    run(main())


def test_oversized_message_is_refused_before_its_body(shared: SluisServer) -> None:
    before = len(limit_records(shared, "max_message"))

    async def main() -> None:
        async with await connect(shared, "agency") as conn:
            raw = await RawSFTP.open(conn)
            # Announce 64 MiB and send none of it: the server must not wait for (or buffer) it.
            raw.send_bytes(u32(64 * 1024 * 1024) + bytes([17]) + u32(1))
            assert await raw.ended(timeout=10)
            # Only that session ended: the connection serves a new one.
            again = await RawSFTP.open(conn)
            assert (await again.request(16, string("/"))).kind == 104  # REALPATH -> NAME
    run(main())
    records = wait_until(lambda: limit_records(shared, "max_message")[before:], "sftp.limit max_message")
    assert records[0]["detail"] == {"limit": "max_message", "value": 64 * 1024 * 1024, "allowed": 256 * 1024}
    assert records[0]["actor"] == "agency" and records[0]["source"].startswith("127.0.0.1:")


def test_malformed_messages_are_audited_then_disconnected(shared: SluisServer) -> None:
    """A first message that is not INIT ends the session; undecodable requests get
    SSH_FX_BAD_MESSAGE; the first is audited as protocol.error, the tenth disconnects."""
    before = len(audit(shared, "protocol.error"))

    async def main() -> None:
        async with await connect(shared, "gent-clerk") as conn:
            raw = await RawSFTP.open(conn, init=False)
            raw.send(16, string("/"))           # REALPATH before INIT
            assert await raw.ended(timeout=10)
            raw = await RawSFTP.open(conn)
            bad = 0
            try:
                for _ in range(20):
                    reply = await raw.request(16, u32(1000) + b"/")   # string longer than the packet
                    assert reply.code == 5, reply                      # SSH_FX_BAD_MESSAGE
                    bad += 1
            except (asyncssh.Error, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                pass
            assert bad == 8, bad   # the first mistake was the missing INIT: ten in all, then gone
    run(main())
    [record] = wait_until(lambda: audit(shared, "protocol.error")[before:], "protocol.error")
    assert record["actor"] == "gent-clerk" and "not INIT" in record["detail"]["what"]
    shared.wait_for(r"disconnecting user=gent-clerk .*too many malformed SFTP messages")


# --- counts ------------------------------------------------------------------------------------
def test_open_handles_per_session(shared: SluisServer) -> None:
    before = len(limit_records(shared, "handles_per_session"))

    async def main() -> None:
        async with await connect(shared, "genk-clerk") as conn:
            raw = await RawSFTP.open(conn)
            handles = [(await raw.opendir("/")).handle for _ in range(DEFAULTS.handles_per_session)]
            refused = await raw.opendir("/")
            assert refused.code == FX_FAILURE and "handles_per_session" in refused.message
            refused = await raw.open_file("/nothing.age", FXF_READ)
            assert refused.code == FX_FAILURE and "at most 32" in refused.message
            assert (await raw.close(handles.pop())).code == FX_OK
            assert (await raw.opendir("/")).kind == HANDLE
            # Another session of the same connection has its own count.
            other = await RawSFTP.open(conn)
            assert (await other.opendir("/")).kind == HANDLE
    run(main())
    records = wait_until(lambda: limit_records(shared, "handles_per_session")[before:], "sftp.limit")
    assert len(records) == 1, records   # the first breach is audited, repeats are counted
    assert records[0]["detail"] == {"limit": "handles_per_session", "value": 33, "allowed": 32}


def test_persistent_offender_is_disconnected(shared: SluisServer) -> None:
    async def main() -> int:
        async with await connect(shared, "gent-clerk") as conn:
            raw = await RawSFTP.open(conn)
            for _ in range(DEFAULTS.handles_per_session):
                await raw.opendir("/")
            refusals = 0
            try:
                for _ in range(MAX_BREACHES + 50):
                    reply = await raw.opendir("/")
                    assert reply.code == FX_FAILURE
                    refusals += 1
            except (asyncssh.Error, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                pass
            return refusals
    refusals = run(main())
    assert refusals == MAX_BREACHES, refusals
    shared.wait_for(r"disconnecting user=gent-clerk .*too many requests over the server's limits")


def test_uploads_per_session(shared: SluisServer) -> None:
    tenant, _ = new_tenant(shared)
    before = len(limit_records(shared, "uploads_per_session"))

    async def main() -> None:
        async with await connect(shared, "agency") as conn:
            raw = await RawSFTP.open(conn)
            flags = FXF_WRITE | FXF_CREAT | FXF_TRUNC
            handles = [(await raw.open_file(f"/{tenant}/part{i}.csv", flags)).handle
                       for i in range(DEFAULTS.uploads_per_session)]
            refused = await raw.open_file(f"/{tenant}/one-more.csv", flags)
            assert refused.code == FX_FAILURE and "uploads_per_session" in refused.message
            for handle in handles:
                await raw.close(handle)   # empty uploads: refused, and no longer in progress
            assert (await raw.open_file(f"/{tenant}/one-more.csv", flags)).kind == HANDLE
    run(main())
    records = wait_until(lambda: limit_records(shared, "uploads_per_session")[before:], "sftp.limit")
    assert records[0]["detail"]["allowed"] == DEFAULTS.uploads_per_session
    wait_until(lambda: not uploads(shared), "every upload row gone after the session")


def test_channels_per_connection(shared: SluisServer) -> None:
    before = len(limit_records(shared, "channels_per_connection"))

    async def main() -> None:
        async with await connect(shared, "genk-clerk") as conn:
            sessions = [await RawSFTP.open(conn) for _ in range(DEFAULTS.channels_per_connection)]
            with pytest.raises(asyncssh.ChannelOpenError) as refused:
                await RawSFTP.open(conn)
            assert "channels_per_connection" in refused.value.reason
            assert refused.value.code == asyncssh.OPEN_RESOURCE_SHORTAGE
            closing = sessions.pop()
            closing.close_channel()
            await closing.writer.channel.wait_closed()
            # A round trip on a remaining session: the server has handled the close by now.
            assert (await sessions[0].request(16, string("/"))).kind == 104
            # The place was given back.
            sessions.append(await RawSFTP.open(conn))
    run(main())
    records = wait_until(lambda: limit_records(shared, "channels_per_connection")[before:], "sftp.limit")
    assert records[0]["detail"]["allowed"] == DEFAULTS.channels_per_connection


# --- memory ------------------------------------------------------------------------------------
def test_unread_replies_do_not_pile_up(shared: SluisServer) -> None:
    """2000 READs of 255 KiB sent without reading a reply: 500 MB if the server buffered its
    replies; with backpressure it holds about one, and every reply still arrives."""
    tenant, clerk = new_tenant(shared)
    stored = run(publish(shared, tenant, "big.bin", blob(600 * 1024, seed=2)))
    assert shared.process is not None
    pid = shared.process.pid
    count = 2000

    async def main() -> dict[str, int]:
        async with await connect(shared, clerk) as conn:
            raw = await RawSFTP.open(conn)
            handle = (await raw.open_file(f"/{stored}", FXF_READ)).handle
            start = proc_status(pid)
            for _ in range(count):
                raw.send(5, string(handle) + (0).to_bytes(8, "big") + u32(MAX_READ))
            await raw.writer.drain()
            peak = proc_status(pid)
            for _ in range(count):
                assert len((await raw.read_reply()).data) == MAX_READ
            end = proc_status(pid)
            return {"start": start["VmHWM"], "peak": max(peak["VmHWM"], end["VmHWM"])}
    seen = run(main())
    print(f"\n{count} unread READs of {MAX_READ} bytes: server peak RSS {seen} KiB")
    assert seen["peak"] - seen["start"] < 64 * 1024, seen   # KiB: far below the 500 MB of replies


def test_key_derivations_share_a_small_pool(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Eight upload opens at once, each scrypt with 128 MiB (log N 17): one at a time
    ([limits] key_derivations = 1), so the server's peak memory grows by about one, not eight."""
    server = SluisServer(tmp_path_factory.mktemp("scrypt"), {
        "crypto": {"scrypt_log_n": 17}, "limits": {"key_derivations": 1}}).standard()
    server.start()
    try:
        assert server.process is not None
        pid = server.process.pid

        async def one(i: int) -> None:
            async with await connect(server, "agency") as conn:
                raw = await RawSFTP.open(conn)
                assert (await raw.open_file(f"/genk/f{i}.csv", FXF_WRITE | FXF_CREAT)).kind == HANDLE

        async def main() -> tuple[int, int]:
            start = proc_status(pid)["VmHWM"]
            await asyncio.gather(*(one(i) for i in range(8)))
            return start, proc_status(pid)["VmHWM"]
        start, peak = run(main())
        print(f"\n8 concurrent upload opens, scrypt 128 MiB each: server peak RSS {start} -> {peak} KiB")
        assert peak - start < 2 * 128 * 1024 + 64 * 1024, (start, peak)   # KiB
    finally:
        server.close()


# --- item 5: never OK unless published --------------------------------------------------------
def test_budget_exhaustion_between_two_senders(shared: SluisServer) -> None:
    """Sender A holds the whole shared reorder budget (512 KiB here); sender B's out-of-order
    write fails with a clear status, B's close fails saying why, nothing of B is published, and
    A's upload completes."""
    tenant_a, _ = new_tenant(shared)
    tenant_b, _ = new_tenant(shared)
    chunk = 128 * 1024
    data_a, data_b = blob(5 * chunk, seed=3), blob(3 * chunk, seed=4)
    flags = FXF_WRITE | FXF_CREAT | FXF_TRUNC

    async def main() -> None:
        async with await connect(shared, "agency") as conn_a, await connect(shared, "agency2") as conn_b:
            a, b = await RawSFTP.open(conn_a), await RawSFTP.open(conn_b)
            handle_a = (await a.open_file(f"/{tenant_a}/a.csv", flags)).handle
            handle_b = (await b.open_file(f"/{tenant_b}/b.csv", flags)).handle
            for i in range(1, 5):   # A: everything but the first chunk, held out of order
                assert (await a.write(handle_a, i * chunk, data_a[i * chunk:(i + 1) * chunk])).code == FX_OK
            assert (await b.write(handle_b, 0, data_b[:chunk])).code == FX_OK      # in order: fine
            busy = await b.write(handle_b, 2 * chunk, data_b[2 * chunk:])           # ahead: no memory
            assert busy.code == FX_FAILURE and "memory for out-of-order writes" in busy.message
            assert (await b.write(handle_b, chunk, data_b[chunk:2 * chunk])).code == FX_OK
            closed = await b.close(handle_b)
            assert closed.code == FX_FAILURE, "a CLOSE returned OK for an upload that was not published"
            assert "nothing was published" in closed.message and f"offset {2 * chunk}" in closed.message
            assert (await a.write(handle_a, 0, data_a[:chunk])).code == FX_OK
            assert (await a.close(handle_a)).code == FX_OK
    run(main())
    published = deliveries(shared, name="a.csv") + deliveries(shared, name="b.csv")
    assert [d["name"] for d in published] == ["a.csv"] and published[0]["plain_size"] == len(data_a)
    assert hashlib.sha256(data_a).hexdigest() == published[0]["plain_sha256"]
    wait_audit(shared, "upload.abort", lambda r: r["detail"].get("name") == "b.csv")
    wait_until(lambda: not uploads(shared) and data_files(shared)["tmp"] == [], "nothing of B left")


def test_one_sender_cannot_take_the_whole_reorder_budget(tmp_path_factory: pytest.TempPathFactory) -> None:
    """With [upload] sender_window at half of total_window, a sender holding its share gets its
    next out-of-order write refused (audited as sftp.limit) while another sender still can."""
    server = SluisServer(tmp_path_factory.mktemp("share"), {
        "upload": {"window": "1MiB", "total_window": "512KiB", "sender_window": "256KiB"}}).standard()
    server.add_user("agency2", "sender")
    server.start()
    chunk = 64 * 1024
    flags = FXF_WRITE | FXF_CREAT | FXF_TRUNC
    try:
        async def main() -> None:
            async with await connect(server, "agency") as conn_a, await connect(server, "agency2") as conn_b:
                a, b = await RawSFTP.open(conn_a), await RawSFTP.open(conn_b)
                handle_a = (await a.open_file("/genk/a.csv", flags)).handle
                handle_b = (await b.open_file("/gent/b.csv", flags)).handle
                for i in range(1, 5):
                    assert (await a.write(handle_a, i * chunk, b"a" * chunk)).code == FX_OK
                over = await a.write(handle_a, 5 * chunk, b"a" * chunk)
                assert over.code == FX_FAILURE and "[upload] sender_window" in over.message, over
                for i in range(1, 4):   # the other sender's out-of-order writes still fit
                    assert (await b.write(handle_b, i * chunk, b"b" * chunk)).code == FX_OK
                assert (await b.write(handle_b, 0, b"b" * chunk)).code == FX_OK
                assert (await b.close(handle_b)).code == FX_OK
                # A catches up, retries the refused write, and completes.
                assert (await a.write(handle_a, 0, b"a" * chunk)).code == FX_OK
                assert (await a.write(handle_a, 5 * chunk, b"a" * chunk)).code == FX_OK
                assert (await a.close(handle_a)).code == FX_OK
        run(main())
        assert sorted((d["name"], d["plain_size"]) for d in deliveries(server)) == [
            ("a.csv", 6 * chunk), ("b.csv", 4 * chunk)]
        [record] = wait_until(lambda: limit_records(server, "sender_window"), "sftp.limit sender_window")
        assert record["actor"] == "agency"
        assert record["detail"] == {"limit": "sender_window", "value": 5 * chunk, "allowed": 4 * chunk}
    finally:
        server.close()


def test_close_after_the_upload_was_dropped_fails_naming_why(shared: SluisServer) -> None:
    tenant, _ = new_tenant(shared)
    flags = FXF_WRITE | FXF_CREAT | FXF_TRUNC

    async def main() -> None:
        async with await connect(shared, "agency") as conn:
            raw = await RawSFTP.open(conn)
            first = (await raw.open_file(f"/{tenant}/list.csv", flags)).handle
            assert (await raw.write(first, 0, b"id;name\n")).code == FX_OK
            assert (await raw.request(13, string(f"/{tenant}/list.csv"))).code == FX_OK   # REMOVE
            closed = await raw.close(first)
            assert closed.code == FX_FAILURE
            assert "nothing was published: deleted by the sender before publishing" in closed.message
    run(main())
    assert deliveries(shared, name="list.csv") == []


def test_close_of_a_replaced_upload_fails_and_the_new_one_publishes(shared: SluisServer) -> None:
    tenant, _ = new_tenant(shared)
    flags = FXF_WRITE | FXF_CREAT | FXF_TRUNC

    async def main() -> None:
        async with await connect(shared, "agency") as conn:
            raw = await RawSFTP.open(conn)
            old = (await raw.open_file(f"/{tenant}/list.csv", flags)).handle
            assert (await raw.write(old, 0, b"old\n")).code == FX_OK
            new = (await raw.open_file(f"/{tenant}/list.csv", flags)).handle
            assert (await raw.write(new, 0, b"new list\n")).code == FX_OK
            closed = await raw.close(old)
            assert closed.code == FX_FAILURE and "replaced by a new upload of the same name" in closed.message
            assert (await raw.close(new)).code == FX_OK
    run(main())
    [delivery] = deliveries(shared, name="list.csv", tenant_id=shared.app().directory.tenant(tenant).id)
    assert delivery["plain_size"] == len(b"new list\n")


def test_scattered_reads_are_capped_per_file(shared: SluisServer) -> None:
    """One byte in two: the 4097th separate part read of one file is refused (audited as
    sftp.limit coverage_ranges); reading on in order still works, and collects the file."""
    tenant, clerk = new_tenant(shared)
    data = blob(20_000, seed=7)
    stored = run(publish(shared, tenant, "list.bin", data))
    [delivery] = deliveries(shared, tenant_id=shared.app().directory.tenant(tenant).id)
    size = delivery["stored_size"]

    async def main() -> None:
        async with await connect(shared, clerk) as conn:
            raw = await RawSFTP.open(conn)
            handle = (await raw.open_file(f"/{stored}", FXF_READ)).handle
            for batch in range(0, MAX_RANGES, 512):     # pipelined: 512 requests, then the replies
                for part in range(batch, batch + 512):
                    raw.send(READ, string(handle) + u64(2 * part) + u32(1))
                for _ in range(512):
                    reply = await raw.read_reply()
                    assert reply.kind == DATA and len(reply.data) == 1, reply
            refused = await raw.read(handle, 2 * MAX_RANGES, 1)
            assert refused.code == FX_FAILURE and f"at most {MAX_RANGES}" in refused.message, refused
            for offset in range(0, size, 32768):
                assert (await raw.read(handle, offset, 32768)).kind == DATA
            assert (await raw.close(handle)).code == FX_OK
    run(main())
    [record] = wait_until(lambda: limit_records(shared, "coverage_ranges"), "sftp.limit coverage_ranges")
    assert record["actor"] == clerk
    assert record["detail"] == {"limit": "coverage_ranges", "value": MAX_RANGES + 1, "allowed": MAX_RANGES}
    [delivery] = deliveries(shared, id=delivery["id"])
    assert delivery["state"] == "collected"


# --- item 5: reads through a handle whose file went away ---------------------------------------
@pytest.mark.parametrize("how", ["recipient deletes it in another session", "operator removes it",
                                 "sender replaces it"])
def test_read_fails_once_the_file_is_gone(shared: SluisServer, how: str) -> None:
    tenant, clerk = new_tenant(shared)
    stored = run(publish(shared, tenant, "list.bin", blob(300 * 1024, seed=5)))

    async def main() -> None:
        async with await connect(shared, clerk) as conn:
            raw = await RawSFTP.open(conn)
            handle = (await raw.open_file(f"/{stored}", FXF_READ)).handle
            assert len((await raw.read(handle, 0, 32768)).data) == 32768
            if how == "recipient deletes it in another session":
                other = await RawSFTP.open(conn)
                assert (await other.request(13, string(f"/{stored}"))).code == FX_OK
            elif how == "operator removes it":   # another process: this test's own App
                app = shared.app()
                [delivery] = [d for d in app.dropbox.recipient_files(_session(app, clerk))]
                await asyncio.to_thread(app.dropbox.remove, delivery, "withdrawn", actor="operator")
            else:
                await publish(shared, tenant, "list.bin", blob(1000, seed=6))
            refused = await raw.read(handle, 32768, 32768)
            assert refused.code == FX_NO_SUCH_FILE and "after it was opened" in refused.message, refused
    run(main())


def _session(app: Any, user: str) -> Any:
    from sluis.server.core.session import Session
    return Session(user=app.directory.find_user(user), source="test")


# --- descriptors ----------------------------------------------------------------------------
@pytest.mark.parametrize("hard, warned", [(1024, True), (8000, False)])
def test_descriptor_limit_raised_or_warned_at_start(hard: int, warned: bool) -> None:
    """The server lifts its soft RLIMIT_NOFILE to what the caps need (20 connections here:
    20 x (1 + 10 x 32) + 1024 = 7444), and warns when the hard limit is too low for them (run in
    a child process, so that the test's own limit stays)."""
    import resource
    import subprocess
    import sys

    code = ("import resource; from pathlib import Path; from sluis.config.settings import Settings, "
            "ServerSettings; from sluis.server.sftp.limits import raise_descriptor_limit; "
            "print(raise_descriptor_limit(Settings(config_path=Path('/x'), "
            "server=ServerSettings(max_connections=20)))); "
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    message, soft = result.stdout.splitlines()
    assert ("raise LimitNOFILE" in message) == warned, message
    assert int(soft) == (hard if warned else 7444)

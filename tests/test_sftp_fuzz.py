"""Adversarial tests of the SFTP layer (issue 8, item 7), against a real `sluis serve`:

- fuzzed packets (hypothesis, bounded): truncated, oversized and undersized frames, unknown
  packet types, bogus handles, wrong attribute flags, huge lengths, string lengths beyond the
  packet, for a sender and a recipient;
- thousands of opens in one session; a hundred channels on one connection;
- a corpus of odd paths (traversal, NUL, overlong, unicode, `..`, `//`, backslashes) against
  every operation for both roles.

After each group the server still serves a real login and a real transfer, nothing outside
the user's view was reached, nothing partial is left or visible, and the server's memory and
descriptors (read from /proc) stayed bounded.
"""

from __future__ import annotations

import asyncio
import struct
import unicodedata
from typing import Any, Awaitable, Iterator

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluis.config.settings import LimitSettings
from sluis.server.sftp.limits import max_read
from tests.support.clients_extra import audit, blob, data_files, deliveries, uploads, wait_until
from tests.support.raw_sftp import (
    ATTRS, CLOSE, DATA, EXTENDED, EXTENDED_REPLY, FSETSTAT, FSTAT, FX_OK, FXF_CREAT, FXF_READ, FXF_TRUNC,
    FXF_WRITE, HANDLE, INIT, LSTAT, MKDIR, NAME, OPEN, OPENDIR, READ, READDIR, READLINK, REALPATH,
    REMOVE, RENAME, RMDIR, SETSTAT, STAT, STATUS, SYMLINK, WRITE, RawSFTP, Reply, connect, proc_status,
    string, u32, u64,
)
from tests.support.server import SluisServer

LIMITS = LimitSettings()
REPLY_TYPES = {STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED_REPLY}
USERS = ("agency", "genk-clerk")
SECRET = "gent-secret.csv"          # sent to gent by agency2: no user of this test may reach it
OWN = "genk-list.csv"               # in genk's box: genk-clerk's own file
MEMORY_BOUND_KIB = 200 * 1024       # growth of the server's peak RSS over a whole group
FD_SLACK = 16                       # descriptors above the idle count once a group is over


# --- one server, one event loop ---------------------------------------------------------------
class Harness:
    """The server, an event loop for the async clients, and one connection per user (renewed
    when the server ends it for misbehaviour)."""

    def __init__(self, server: SluisServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.conns: dict[str, asyncssh.SSHClientConnection] = {}
        assert server.process is not None
        self.pid = server.process.pid
        self.idle = proc_status(self.pid)
        self.peak = dict(self.idle)

    def run(self, coro: Awaitable[Any], timeout: float = 120) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    async def conn(self, user: str) -> asyncssh.SSHClientConnection:
        conn = self.conns.get(user)
        if conn is None or conn.is_closed():
            conn = self.conns[user] = await connect(self.server, user)
        return conn

    async def session(self, user: str) -> RawSFTP:
        for _ in range(3):
            try:
                return await RawSFTP.open(await self.conn(user))
            except (asyncssh.Error, OSError):
                self.conns.pop(user, None)    # ended by the server (too many protocol errors)
        raise AssertionError(f"no SFTP session for {user}")

    def sample(self) -> dict[str, int]:
        now = proc_status(self.pid)
        self.peak = {key: max(self.peak[key], now[key]) for key in now}
        return now

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.loop.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    server = SluisServer(tmp_path_factory.mktemp("fuzz"), {"policy": {"yearly_limit": 366}}).standard()
    server.add_user("agency2", "sender")
    server.add_tenant("health")
    server.add_user("health-clerk", "recipient", "health")
    server.start()
    h = Harness(server)
    h.run(publish(server, "gent", SECRET, b"national register numbers\n", user="agency2"))
    h.run(publish(server, "genk", OWN, b"the list for genk\n"))
    try:
        yield h
    finally:
        h.close()
        server.close()
        print(f"\nserver /proc: idle {h.idle}, peak {h.peak}")


async def publish(server: SluisServer, tenant: str, name: str, data: bytes, user: str = "agency") -> None:
    async with await connect(server, user) as conn, conn.start_sftp_client() as client:
        async with client.open(f"/{tenant}/{name}", "wb") as handle:
            await handle.write(data)


def still_serving(h: Harness, group: str) -> None:
    """A real login and a real transfer work; nothing partial, nothing outside anyone's view."""
    data = blob(300 * 1024, seed=len(group))

    async def transfer() -> bytes:
        await publish(h.server, "health", "health.csv", data)
        async with await connect(h.server, "health-clerk") as conn, conn.start_sftp_client() as client:
            async with client.open("/health.csv.age", "rb") as handle:
                return await handle.read()
    stored = h.run(transfer())
    [row] = [d for d in deliveries(h.server, name="health.csv") if d["state"] != "removed"]
    assert len(stored) == row["stored_size"], f"after {group}: the transfer came back short"
    # Nothing else was published, the secret is untouched, and no upload is left half-done
    # (sessions of this group may still be ending: wait for their clean-up).
    names = {d["name"] for d in deliveries(h.server) if d["state"] != "removed"}
    assert names <= {"health.csv", SECRET, OWN}, f"after {group}: published {names}"
    assert [d["state"] for d in deliveries(h.server, name=SECRET)] == ["published"], group
    assert not [r for r in audit(h.server) if r["event"].startswith("download") and
                r["detail"].get("name") == f"{SECRET}.age"], f"after {group}: the secret was read"
    wait_until(lambda: not uploads(h.server) and data_files(h.server)["tmp"] == [],
               f"no upload left after {group}", timeout=20)
    now = h.sample()
    assert h.peak["VmHWM"] - h.idle["VmHWM"] < MEMORY_BOUND_KIB, (group, h.idle, h.peak)
    wait_until(lambda: proc_status(h.pid)["fds"] <= h.idle["fds"] + FD_SLACK,
               f"descriptors back to idle after {group} (now {now['fds']}, idle {h.idle['fds']})")


# --- fuzzed packets ---------------------------------------------------------------------------
handles = st.one_of(st.binary(max_size=8), st.just(b"\x00\x00\x00\x00"), st.binary(min_size=300, max_size=600))
lengths = st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x100000, 261120, 261121]) | st.integers(0, 2**32 - 1)
offsets = st.sampled_from([0, 2**63, 2**64 - 1, 2**32]) | st.integers(0, 2**64 - 1)
paths = st.sampled_from([b"/", b"/genk", b"/genk-list.csv.age", b"/gent/" + SECRET.encode(), b"\x00", b""]) \
    | st.binary(max_size=40)


@st.composite
def attrs(draw: st.DrawFn) -> bytes:
    """An attribute block with any flags (unknown bits included) and maybe too few fields."""
    flags = draw(st.sampled_from([0, 1, 0x8000_0000, 0xFFFF_FFFF, 0x0F, 0x80000004])
                 | st.integers(0, 2**32 - 1))
    return u32(flags) + draw(st.binary(max_size=40))


@st.composite
def bodies(draw: st.DrawFn) -> tuple[int, bytes]:
    kind = draw(st.sampled_from([OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT, OPENDIR,
                                 READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME, READLINK,
                                 SYMLINK, EXTENDED, INIT, 0, 2, 21, 101, 200, 201, 255]))
    shape = draw(st.integers(0, 3))
    if shape == 0:      # anything at all
        return kind, draw(st.binary(max_size=200))
    if shape == 1:      # a string whose length runs beyond the packet
        return kind, u32(draw(lengths)) + draw(st.binary(max_size=20))
    if kind in (READ, WRITE):
        body = string(draw(handles)) + u64(draw(offsets))
        return kind, body + (u32(draw(lengths)) if kind == READ else string(draw(st.binary(max_size=64))))
    if kind in (OPEN, SETSTAT, FSETSTAT, MKDIR):
        first = string(draw(handles) if kind == FSETSTAT else draw(paths))
        flags = u32(draw(st.integers(0, 0x3F))) if kind == OPEN else b""
        return kind, first + flags + draw(attrs())
    if kind == EXTENDED:
        name = draw(st.sampled_from([b"limits@openssh.com", b"posix-rename@openssh.com", b"statvfs@openssh.com",
                                     b"copy-data", b"hardlink@openssh.com", b"x" * 300]))
        return kind, string(name) + draw(st.binary(max_size=40))
    return kind, string(draw(paths) if kind not in (CLOSE, READDIR, FSTAT) else draw(handles)) \
        + draw(st.binary(max_size=8))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """A request framed correctly, or with a length that lies (short, long, tiny, over the cap)."""
    kind, body = draw(bodies())
    payload = bytes([kind]) + u32(draw(st.integers(0, 2**32 - 1))) + body
    framing = draw(st.sampled_from(["exact", "exact", "exact", "short", "long", "tiny", "oversized"]))
    if framing == "exact":
        return u32(len(payload)) + payload
    if framing == "short":
        return u32(max(0, len(payload) - draw(st.integers(1, 8)))) + payload
    if framing == "long":       # truncated: the rest never comes (the channel is then closed)
        return u32(len(payload) + draw(st.integers(1, 10_000))) + payload
    if framing == "tiny":
        return u32(draw(st.integers(0, 4))) + payload
    return u32(draw(st.integers(LIMITS.max_message + 1, 2**32 - 1))) + payload


def test_fuzzed_packets(harness: Harness) -> None:
    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(user=st.sampled_from(USERS), packets=st.lists(frames(), min_size=1, max_size=4))
    def one(user: str, packets: list[bytes]) -> None:
        async def exchange() -> None:
            raw = await harness.session(user)
            for packet in packets:
                raw.send_bytes(packet)
            raw.writer.write_eof()
            # Every reply is a well-formed SFTP reply, and the session ends (no hang).
            while True:
                try:
                    reply: Reply = await raw.read_reply(timeout=20)
                except (asyncio.IncompleteReadError, asyncssh.Error, OSError):
                    break
                assert reply.kind in REPLY_TYPES, reply
                assert reply.kind != STATUS or "Uncaught exception" not in reply.message, reply
                if reply.kind == DATA:
                    assert len(reply.data) <= max_read(LIMITS)
        harness.run(exchange())
    one()
    harness.sample()
    errors = audit(harness.server, "protocol.error")
    assert errors and all(r["actor"] in USERS and r["source"] for r in errors)
    still_serving(harness, "fuzzed packets")


# --- thousands of opens, a hundred channels ----------------------------------------------------
def test_thousands_of_opens(harness: Harness) -> None:
    async def main() -> None:
        raw = await harness.session("genk-clerk")
        for i in range(1500):       # open, read, close: never more than one handle at a time
            handle = (await raw.open_file(f"/{OWN}.age", FXF_READ)).handle
            assert (await raw.read(handle, 0, 0xFFFFFFFF)).kind == DATA
            assert (await raw.close(handle)).code == FX_OK
            if i % 300 == 0:
                harness.sample()
        greedy = await harness.session("genk-clerk")
        held, refused = 0, 0
        try:
            for _ in range(2000):   # open and never close: the cap, then a disconnect
                reply = await greedy.open_file(f"/{OWN}.age", FXF_READ)
                held, refused = (held + 1, refused) if reply.kind == HANDLE else (held, refused + 1)
                if held == LIMITS.handles_per_session:
                    harness.sample()
        except (asyncssh.Error, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        assert held == LIMITS.handles_per_session and 0 < refused < 2000, (held, refused)
    harness.run(main())
    harness.conns.pop("genk-clerk", None)
    still_serving(harness, "thousands of opens")


def test_hundred_channels(harness: Harness) -> None:
    async def main() -> None:
        conn = await connect(harness.server, "genk-clerk")
        async with conn:
            opened, refused = [], 0
            for _ in range(100):
                try:
                    opened.append(await RawSFTP.open(conn))
                except asyncssh.ChannelOpenError:
                    refused += 1
            assert (len(opened), refused) == (LIMITS.channels_per_connection, 100 - LIMITS.channels_per_connection)
            # Every admitted session works, and holds as many files open as it may: the most
            # descriptors one connection can cost (10 x 32 + its socket).
            before = proc_status(harness.pid)["fds"]
            for raw in opened:
                assert (await raw.request(REALPATH, string("."))).kind == NAME
                for _ in range(LIMITS.handles_per_session):
                    assert (await raw.open_file(f"/{OWN}.age", FXF_READ)).kind == HANDLE
                over = await raw.open_file(f"/{OWN}.age", FXF_READ)
                assert over.kind == STATUS and "handles_per_session" in over.message
            most = harness.sample()["fds"]
            allowed = LIMITS.channels_per_connection * LIMITS.handles_per_session
            assert allowed <= most - before <= allowed + FD_SLACK, (before, most)
            print(f"\none connection at its caps: {most - before} descriptors more (allowed {allowed})")
            for raw in opened:
                raw.close_channel()
    harness.run(main())
    still_serving(harness, "a hundred channels")


# --- a corpus of odd paths against every operation, for both roles -----------------------------
TRAVERSAL = ["..", "/..", "/../..", "../gent", "/../gent", f"/genk/../gent/{SECRET}", f"/../gent/{SECRET}",
             f"gent/{SECRET}", f"/gent/{SECRET}", f"/gent/{SECRET}.age", f"/{SECRET}.age", f"/./{SECRET}.age",
             "/genk/..", "/genk/../..", "/genk/./../gent", "/./.", "/.", ".", "", "/", "//", "///etc/passwd",
             "//gent", "/genk//x.csv", "/etc/passwd", "/proc/self/environ", "~", "~root", "/genk/~",
             "%2e%2e/gent", "/genk/%2e%2e/gent", "....//gent", "/genk/.../gent"]
ODD = ["/genk/x\x00.csv", "\x00", "/gent\x00/x.csv", "/genk/" + "a" * 5000, "/" + "b" * 300 + ".csv",
       "/genk\\..\\gent", "\\gent\\" + SECRET, "/genk/..\\..\\gent", "C:\\Windows", "/genk/x\ny.csv",
       "/genk/\x1b[31mred.csv", "/genk/\u202egnp.csv", "/genk/café.csv",
       unicodedata.normalize("NFD", "/genk/café.csv"), "/gent\u2215" + SECRET, "/genk/\uff0e\uff0e/gent",
       "/genk/😀.csv", "/genk/x.csv/", "/genk/x.csv/.", "/genk/.hidden", "/genk/ ", "/genk/x.csv.filepart",
       f"/genk/{OWN}", f"/{OWN}.age", "/genk", "/gent"]
CORPUS = TRAVERSAL + ODD


def _requests(path: bytes) -> list[tuple[int, bytes]]:
    other = b"/genk/renamed.csv"
    return [
        (REALPATH, string(path)), (STAT, string(path)), (LSTAT, string(path)), (OPENDIR, string(path)),
        (OPEN, string(path) + u32(FXF_READ) + u32(0)),
        (OPEN, string(path) + u32(FXF_WRITE | FXF_CREAT | FXF_TRUNC) + u32(0)),
        (SETSTAT, string(path) + u32(0x4) + u32(0o777)), (SETSTAT, string(path) + u32(0x8) + u32(1) + u32(1)),
        (RENAME, string(path) + string(other)), (RENAME, string(other) + string(path)),
        (EXTENDED, string(b"posix-rename@openssh.com") + string(path) + string(other)),
        (MKDIR, string(path) + u32(0)), (RMDIR, string(path)), (READLINK, string(path)),
        (SYMLINK, string(path) + string(b"/genk")), (REMOVE, string(path)),
    ]


def test_path_corpus(harness: Harness) -> None:
    reached: list[str] = []

    async def probe(user: str) -> None:
        raw = await harness.session(user)
        for text in CORPUS:
            path = text.encode("utf-8", "surrogatepass")
            for kind, body in _requests(path):
                reply = await raw.request(kind, body)
                assert reply.kind in REPLY_TYPES, (user, text, kind, reply)
                assert reply.kind != STATUS or "Uncaught exception" not in reply.message, (text, reply)
                if reply.kind == NAME:          # REALPATH: a clean absolute path, never above /
                    (length,) = struct.unpack(">I", reply.body[4:8])
                    name = reply.body[8:8 + length].decode()
                    assert name.startswith("/") and ".." not in name.split("/"), (user, text, name)
                reading = kind == OPEN and body.endswith(u32(FXF_READ) + u32(0))
                if reply.kind == HANDLE:
                    if reading and (SECRET in text or user == "agency"):
                        reached.append(f"{user} opened {text!r} for reading")
                    await raw.close(reply.handle)   # an upload opened here stays empty: refused
                if reply.kind == ATTRS and SECRET in text:
                    reached.append(f"{user} saw {text!r}")
                if reply.kind == STATUS and reply.code == FX_OK and kind == REMOVE and SECRET in text:
                    reached.append(f"{user} removed {text!r}")
        harness.sample()
    for user in USERS:
        harness.run(probe(user), timeout=300)
    assert reached == []
    still_serving(harness, "path corpus")

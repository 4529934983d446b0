"""The pre-authentication parts on their own: the defender's scoring and bans (real SQLite, a
fake clock), the connection registry's caps, the bounded password pool, and the asyncssh
internals that sftp/listener.py overrides (fails loudly if an upgrade changes them)."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import threading
import weakref
from dataclasses import replace

import asyncssh
import asyncssh.auth
import pytest

from sluis.config.settings import DefenderSettings, ServerSettings
from sluis.server.core.bans import BanStore
from sluis.server.core.defender import MAX_TRACKED_SOURCES, Defender, Penalty, Throttle, source_key
from sluis.server.core.workpool import BoundedPool, PoolBusy
from sluis.server.sftp.connections import ConnectionRegistry, Refusal
from sluis.server.sftp.listener import SluisServerConnection
from tests.support.pg import both_engines  # noqa: F401  (these tests run on both engines)

SETTINGS = DefenderSettings(threshold=10, observe=60, ban_time=100, ban_growth=3, max_ban=500,
                            allowlist=("10.0.0.0/8", "2001:db8:1::/48"))


@pytest.fixture
def defender(lib):
    _, app, clock = lib
    return Defender(SETTINGS, BanStore(app.db, app.audit), clock), app, clock


def test_source_key_groups_ipv6_by_64():
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:5:6:1::9") == source_key("2001:db8:5:6:ffff::1") == "2001:db8:5:6::/64"
    assert source_key("2001:db8:5:7::1") != source_key("2001:db8:5:6::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_score_over_the_threshold_within_the_window_bans(defender):
    d, app, clock = defender
    for _ in range(3):
        assert d.penalise("192.0.2.1", Penalty.UNKNOWN_USER) is None      # 3 each: 9 < 10
    clock.advance(seconds=61)                                   # those fall out of the window
    for _ in range(3):
        assert d.penalise("192.0.2.1", Penalty.UNKNOWN_USER) is None
    ban = d.penalise("192.0.2.1", Penalty.FAILURE)
    assert ban is not None and ban.score == 10 and ban.reasons == {"unknown_user": 9, "failure": 1}
    assert (ban.until - clock.now()).total_seconds() == 100
    assert d.banned("192.0.2.1") and not d.banned("192.0.2.2")
    d.save(ban, source="192.0.2.1:5555")
    [record] = [r for r in app.audit.records() if r.event == "auth.ban"]
    assert record.detail["address"] == "192.0.2.1" and record.detail["score"] == 10
    clock.advance(seconds=101)
    assert not d.banned("192.0.2.1")


def test_repeat_bans_grow_up_to_the_maximum_and_survive_a_reload(defender):
    d, app, clock = defender
    lengths = []
    for _ in range(4):
        for _ in range(10):
            ban = d.penalise("2001:db8:9:9::1", Penalty.FAILURE)
        assert ban is not None
        d.save(ban, source=None)
        lengths.append((ban.until - clock.now()).total_seconds())
        fresh = Defender(SETTINGS, BanStore(app.db, app.audit), clock)   # a restart
        fresh.load()
        assert fresh.banned("2001:db8:9:9::77")                           # same /64
        clock.advance(seconds=(ban.until - clock.now()).total_seconds() + 1)
        d = fresh
    assert lengths == [100, 300, 500, 500]


def test_allowlisted_sources_are_never_banned(defender):
    d, _, _ = defender
    for address in ("10.1.2.3", "2001:db8:1:2::5", "::ffff:10.9.9.9"):
        for _ in range(50):
            assert d.penalise(address, Penalty.UNKNOWN_USER) is None
        assert not d.banned(address)


def test_disabled_defender_bans_nobody(lib):
    _, app, clock = lib
    d = Defender(replace(SETTINGS, enabled=False), BanStore(app.db, app.audit), clock)
    assert all(d.penalise("192.0.2.1", Penalty.UNKNOWN_USER) is None for _ in range(50))


def test_lift_ends_a_ban_but_keeps_its_count(defender):
    d, app, clock = defender
    for _ in range(10):
        ban = d.penalise("192.0.2.9", Penalty.FAILURE)
    d.save(ban, source=None)
    for _ in range(10):                                  # an older, ended ban stays in the table
        old = d.penalise("192.0.2.10", Penalty.FAILURE)
    d.save(old, source=None)
    clock.advance(seconds=101)
    for _ in range(10):
        ban = d.penalise("192.0.2.9", Penalty.FAILURE)
    d.save(ban, source=None)
    d.load()
    assert d.banned("192.0.2.9")
    store = BanStore(app.db, app.audit)
    assert store.lift("192.0.2.9", clock.now(), actor="admin:test", source="cli")
    assert not store.lift("192.0.2.9", clock.now(), actor="admin:test", source="cli")
    d.load()
    assert not d.banned("192.0.2.9")
    for _ in range(10):
        again = d.penalise("192.0.2.9", Penalty.FAILURE)
    assert again is not None and again.offences == 3


def test_penalty_table_is_bounded(defender):
    d, _, _ = defender
    for n in range(MAX_TRACKED_SOURCES + 500):
        d.penalise(f"198.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", Penalty.FAILURE)
    assert len(d._scores) == MAX_TRACKED_SOURCES


def test_throttle_reports_once_per_interval_with_the_count(lib):
    _, _, clock = lib
    throttle = Throttle(clock, interval=60, capacity=3)
    assert throttle.hit("a") == 1
    assert [throttle.hit("a") for _ in range(4)] == [None] * 4
    clock.advance(seconds=60)
    assert throttle.hit("a") == 5
    for key in "bcdef":
        throttle.hit(key)
    assert len(throttle._seen) == 3


def test_registry_caps():
    reg = ConnectionRegistry(ServerSettings(max_connections=6, max_startups=4, per_source_max_startups=2,
                                            max_sessions_per_user=1))
    conns = [object() for _ in range(8)]
    assert reg.admit(conns[0], "192.0.2.1") is None
    assert reg.admit(conns[1], "192.0.2.1") is None
    assert reg.admit(conns[2], "192.0.2.1") is Refusal.PER_SOURCE_MAX_STARTUPS
    assert reg.authenticate(conns[0], "alice")
    assert reg.admit(conns[2], "192.0.2.1") is None                      # logged in: no longer pending
    assert not reg.authenticate(conns[1], "alice")                       # one session per user
    assert reg.admit(conns[3], "2001:db8::1") is None
    assert reg.admit(conns[4], "2001:db8::2") is None
    assert reg.admit(conns[6], "2001:db8::3") is Refusal.PER_SOURCE_MAX_STARTUPS   # same /64
    assert reg.unauthenticated == 4
    assert reg.admit(conns[5], "192.0.2.7") is Refusal.MAX_STARTUPS
    reg.release(conns[0])
    assert reg.users() == set()
    assert reg.make_room("192.0.2.1") is None                  # it holds 2 itself: no source holds 2 more
    assert reg.make_room("192.0.2.7") is conns[1]              # the oldest of a source holding 2
    assert reg.admit(conns[5], "192.0.2.7") is None
    assert reg.unauthenticated == 4 and len(reg.live) == 4


def test_registry_makes_room_from_the_heaviest_source():
    reg = ConnectionRegistry(ServerSettings(max_connections=50, max_startups=4, per_source_max_startups=3))
    heavy = [object() for _ in range(3)]
    for conn in heavy:
        assert reg.admit(conn, "192.0.2.1") is None
    assert reg.admit(object(), "192.0.2.2") is None
    assert reg.refusal("192.0.2.3") is Refusal.MAX_STARTUPS
    assert reg.make_room("192.0.2.3") is heavy[0]                         # the oldest of the heaviest
    assert reg.admit(object(), "192.0.2.3") is None
    assert reg.make_room("192.0.2.3") is None                             # 2 is not 2 more than 1
    assert reg.unauthenticated == 4


def test_password_pool_refuses_beyond_its_queue():
    gate = threading.Event()

    async def main() -> None:
        pool = BoundedPool("t", threads=1, queue=1)
        first = asyncio.ensure_future(pool.run(gate.wait, 10))
        second = asyncio.ensure_future(pool.run(gate.wait, 10))
        await asyncio.sleep(0)
        with pytest.raises(PoolBusy):
            await pool.run(gate.wait, 10)
        gate.set()
        assert await first and await second
        assert pool.pending == 0
        assert await pool.run(lambda: 7) == 7
        pool.shutdown()

    asyncio.run(main())


def test_asyncssh_internals():
    """sftp/listener.py overrides these asyncssh 2.24 behaviours; an upgrade that changes them must
    be looked at (see the module docstring)."""
    assert asyncssh.__version__.startswith("2.24."), asyncssh.__version__
    base = asyncssh.SSHServerConnection
    assert list(inspect.signature(base.__init__).parameters)[:6] == [
        "self", "loop", "options", "acceptor", "error_handler", "wait"]
    assert inspect.iscoroutinefunction(base.send_userauth_success)
    assert list(inspect.signature(base.send_userauth_failure).parameters) == ["self", "partial_success"]
    success = inspect.getsource(asyncssh.connection.SSHConnection.send_userauth_success)
    assert success.index("MSG_USERAUTH_SUCCESS") < success.index("auth_completed")
    assert "conn.send_userauth_failure(False)" in inspect.getsource(asyncssh.auth.lookup_server_auth)
    assert "self._conn.send_userauth_failure" in inspect.getsource(asyncssh.auth.ServerAuth.send_failure)
    timer = inspect.getsource(asyncssh.connection.SSHConnection._login_timer_callback)
    assert "Login timeout expired" in timer
    assert "self._owner.connection_made" in inspect.getsource(asyncssh.connection.SSHConnection.connection_made)
    assert inspect.iscoroutinefunction(asyncssh.SSHServerConnectionOptions.construct)
    made = inspect.getsource(asyncssh.connection.SSHConnection.connection_made)
    assert made.index("self._peer_addr, self._peer_port") < made.index("self._connection_made()")
    assert "self._peer_addr" in inspect.getsource(asyncssh.SSHServerConnection._connection_made)
    recv = inspect.getsource(asyncssh.connection.SSHConnection)
    assert "self._recv_handler = self._recv_pkthdr" in recv and "while self._inpbuf and self._recv_handler():" in recv
    for name in ("send_userauth_failure", "send_userauth_success", "_login_timer_callback", "_connection_made",
                 "connection_lost"):
        assert name in SluisServerConnection.__dict__


def test_a_source_is_forgotten_max_ban_after_its_ban_ends(defender):
    d, app, clock = defender
    for _ in range(10):
        ban = d.penalise("192.0.2.20", Penalty.FAILURE)
    d.save(ban, source=None)
    clock.advance(seconds=100 + 500 + 1)               # ban_time, then max_ban
    d.load()
    assert not app.db.query("SELECT * FROM bans")
    for _ in range(10):
        again = d.penalise("192.0.2.20", Penalty.FAILURE)
    assert again is not None and again.offences == 1


def test_allowlist_setting_is_checked():
    from sluis.config.values import parse_networks

    assert parse_networks(["10.1.2.3/8", "2001:db8::1"]) == ("10.0.0.0/8", "2001:db8::1/128")
    for bad in (["10.0.0.300/8"], "10.0.0.0/8", [7]):
        with pytest.raises(ValueError, match="CIDR"):
            parse_networks(bad)


def test_a_protocol_error_is_logged_with_the_clients_words_quoted_and_audited(lib, caplog):
    _, app, _ = lib
    what = 'bad version line "SSH-2.0-x" user="root"'

    async def main() -> None:
        app.gate.protocol_error("192.0.2.9", "192.0.2.9:4000", "-", what)
        assert await app.inflight.settle(5) == 0

    with caplog.at_level(logging.INFO, logger="sluis.gate"):
        asyncio.run(main())
    [line] = [r.getMessage() for r in caplog.records if "protocol error from" in r.getMessage()]
    assert line.endswith(': "bad version line \\"SSH-2.0-x\\" user=\\"root\\""'), line
    [record] = [r for r in app.audit.records() if r.event == "protocol.error"]
    assert record.detail["what"] == what and record.source == "192.0.2.9:4000"


class _Owner(asyncssh.SSHServer):
    """A stand-in for sftp/auth.py's SSHServer: no authentication; it keeps a weak reference to
    its connection and says when the connection is lost."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self.connection: weakref.ref[asyncssh.SSHServerConnection] | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.connection = weakref.ref(conn)

    def begin_auth(self, username: str) -> bool:
        return False

    def attempt_failed(self) -> bool:
        return True

    async def login_allowed(self) -> bool:
        return True

    def login_timed_out(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


def test_a_closed_connection_is_freed_without_the_cycle_collector():
    """asyncssh leaves a lost connection in a reference cycle (its packet reader is a bound method
    of it); sftp/listener.py breaks it. With the collector off, only reference counting can free
    the connection once an unpatched asyncssh client has logged in, asked for a session and gone."""
    from sluis.server.sftp import listener

    async def main() -> None:
        owner = _Owner()
        server = await listener.listen("127.0.0.1", 0, lambda host, port: True, server_factory=lambda: owner,
                                       server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")])
        port = server.sockets[0].getsockname()[1]
        try:
            async with asyncssh.connect("127.0.0.1", port, username="x", known_hosts=None,
                                        client_keys=None) as client:
                with pytest.raises(asyncssh.ChannelOpenError):   # the stand-in serves no session
                    await client.run("true")
            await asyncio.wait_for(owner.lost.wait(), 10)
            assert owner.connection is not None
            for _ in range(100):      # the loop's callbacks for the closed transport run out
                if owner.connection() is None:
                    break
                await asyncio.sleep(0)
            assert owner.connection() is None, "a closed connection outlives its last reference: a cycle"
        finally:
            server.close()
            await server.wait_closed()

    gc.collect()
    gc.disable()
    try:
        asyncio.run(main())
    finally:
        gc.enable()

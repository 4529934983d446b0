"""The SSH listener, and the one place where sluis overrides asyncssh's connection internals.

`asyncssh.create_server` builds an `SSHServerConnection` for every accepted socket before any
code of ours runs. We accept sockets ourselves (`loop.create_server`) so that a banned source
or a full pre-auth cap is refused with `transport.abort()`, before asyncssh is involved at all:
no version line, no key exchange, nothing allocated but the socket. An admitted socket is
handed to `SluisServerConnection` (`transport.set_protocol`), exactly as asyncssh's own
`listen()` would have done with the same options.

`SluisServerConnection` replaces these upstream behaviours of asyncssh 2.24 (pinned; the test
tests/test_preauth_units.py::test_asyncssh_internals fails if an upgrade changes them):
- `send_userauth_failure`: upstream sends USERAUTH_FAILURE with no cap on attempts. Here every
  failure counts (any method: 'none' after the first request, keyboard-interactive, unsupported
  methods, rejected keys, bad signatures, wrong passwords) and the owner may disconnect instead.
- `send_userauth_success`: upstream sends USERAUTH_SUCCESS and only then calls `auth_completed`.
  Here the owner's `login_allowed()` coroutine is awaited first (per-user session cap, and the
  `auth.success` audit record committed); if it says no, the login is refused and closed.
- `_login_timer_callback`: upstream drops the connection at the login timeout without telling
  the owner; here the owner learns it first (to penalise the source).
- `_connection_made` (behind a proxy only): the peer address asyncssh keeps and logs is the
  client's from the PROXY header, not the proxy's.
- `connection_lost`: upstream keeps its packet reader as a bound method of the connection
  (`_recv_handler`) after the connection is gone, a reference cycle that leaves every closed
  connection, with its ciphers, options and logger, to Python's cycle collector: 100 closed
  sessions kept 4.8 MiB, growing by 2 MiB per 100 more until a full collection (issue 12).
  Here the reader is replaced once upstream has cleaned up, so a connection is freed when it ends.

Behind a load balancer (`[server] proxy_protocol`, docs/defender.md "Behind a load balancer")
a socket from a trusted proxy first gets `_HeaderReader`: it reads the PROXY header
(sftp/proxyproto.py) within `proxy_timeout` and at most `proxyproto.MAX_HEADER` bytes, then the
client address from it goes through the same screen and becomes the connection's `peername`, so
caps, penalties, bans, log lines and audit `source` all see the client. A LOCAL header (a health
check; also a v1 header naming the proxy itself as the client, as HAProxy's v1 checks send)
is answered with the SSH version line and closed, logging nothing. Any other peer is refused
before a byte is read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Protocol, cast

import asyncssh

from ..core.addresses import client_ip
from . import proxyproto


class AuthOwner(Protocol):
    """What `SluisServerConnection` asks of its SSHServer (sftp/auth.py)."""

    def attempt_failed(self) -> bool: ...       # False: the cap is reached, disconnect

    async def login_allowed(self) -> bool: ...  # False: refuse the login that just succeeded

    def login_timed_out(self) -> None: ...


Screen = Callable[[str, int], bool]   # (host, port) -> admit? (a refusal is recorded by the screen)


@dataclass(frozen=True)
class ProxyGate:
    """What the listener needs to take connections through a load balancer (PROXY protocol)."""

    screen_peer: Screen                          # may this peer send a header? (refusal recorded)
    failed: Callable[[str, int, str], None]      # (peer host, port, what): no or bad header, penalise
    full: Callable[[str, int], None]             # (peer host, port) refused: max_pending reached
    timeout: float                               # seconds a trusted peer has to send the header
    max_pending: int                             # sockets reading a header at once; more are refused


class SluisServerConnection(asyncssh.SSHServerConnection):
    """asyncssh's server connection with sluis's attempt cap, recorded logins and timeout hook."""

    def send_userauth_failure(self, partial_success: bool) -> None:
        owner: Any = self._owner
        if owner is not None and not owner.attempt_failed():
            self.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many authentication failures")
            return
        super().send_userauth_failure(partial_success)

    async def send_userauth_success(self) -> None:
        owner: Any = self._owner
        if owner is None or not await owner.login_allowed():
            self.disconnect(asyncssh.DISC_BY_APPLICATION, "login refused")
            return
        await super().send_userauth_success()

    def _connection_made(self) -> None:
        client: Any = self._extra.get("peername")
        if client is not None:   # behind a proxy: the client's address, as get_extra_info gives it
            self._peer_addr, self._peer_port = client[0], client[1]
        super()._connection_made()

    def _login_timer_callback(self) -> None:
        owner: Any = self._owner
        if owner is not None:
            owner.login_timed_out()
        super()._login_timer_callback()

    def connection_lost(self, exc: Exception | None = None) -> None:
        super().connection_lost(exc)
        self._recv_handler = _no_more_packets   # was a bound method of self: the cycle


def _no_more_packets() -> bool:
    return False


class _Gate(asyncio.Protocol):
    """The protocol of a just-accepted socket: refuse it, or hand it to an SSH connection."""

    def __init__(self, screen: Screen, make_connection: Callable[[], SluisServerConnection]) -> None:
        self._screen = screen
        self._make_connection = make_connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport is a full Transport (uvloop's has abort() too, though it is
        # no registered subclass, so a cast rather than an isinstance check).
        stream = cast(asyncio.Transport, transport)
        peer = stream.get_extra_info("peername")
        if not peer or not self._screen(str(peer[0]), int(peer[1])):
            stream.abort()
            return
        connection = self._make_connection()
        transport.set_protocol(connection)
        connection.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class _HeaderReader(asyncio.Protocol):
    """A socket from a peer that must start with a PROXY header: read it (bounded in bytes and
    time), then screen the client it names and hand the socket to an SSH connection."""

    def __init__(self, gate: ProxyGate, screen: Screen, make_connection: Callable[[], SluisServerConnection],
                 pending: list[int], health_reply: bytes) -> None:
        self._gate, self._screen, self._make_connection = gate, screen, make_connection
        self._pending = pending            # [sockets reading a header], shared by the listener
        self._health_reply = health_reply
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._peer = ("?", 0)
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)   # as in _Gate
        peer = stream.get_extra_info("peername")
        self._peer = (str(peer[0]), int(peer[1])) if peer else ("?", 0)
        if not peer or not self._gate.screen_peer(*self._peer):
            stream.abort()
            return
        if self._pending[0] >= self._gate.max_pending:
            self._gate.full(*self._peer)
            stream.abort()
            return
        self._transport = stream
        self._pending[0] += 1
        self._timer = asyncio.get_running_loop().call_later(self._gate.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        self._buffer += data
        try:
            header = proxyproto.parse(bytes(self._buffer))
        except proxyproto.ProxyHeaderError as exc:
            self._fail(str(exc))
            return
        if header is not None:
            self._proceed(header)

    def eof_received(self) -> bool:
        if self._transport is not None:
            if self._buffer:
                self._fail("connection closed inside the PROXY header")
            else:   # a bare connect (a TCP check without check-send-proxy): nothing to record
                self._finish().close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._finish()

    def _finish(self) -> asyncio.Transport:
        """Stop reading the header: the timer and the pending count are released once."""
        transport, self._transport = self._transport, None
        assert transport is not None
        self._pending[0] -= 1
        if self._timer is not None:
            self._timer.cancel()
        return transport

    def _timed_out(self) -> None:
        if self._transport is not None:
            self._fail(f"no complete PROXY header within {self._gate.timeout:g}s")

    def _fail(self, what: str) -> None:
        self._finish().abort()
        self._gate.failed(*self._peer, what)

    def _proceed(self, header: proxyproto.Header) -> None:
        transport = self._finish()
        rest = bytes(self._buffer[header.length:])
        self._buffer.clear()
        client = header.source
        if header.command is proxyproto.Command.LOCAL or client is None or (
                header.version == 1 and _same_host(client[0], self._peer[0])):
            # A health check: LOCAL (v2, v1 UNKNOWN), or a v1 header naming the proxy itself as
            # the client (HAProxy's v1 checks do). Answered: the node is alive, SSH would answer.
            transport.write(self._health_reply)
            transport.close()
            return
        if not self._screen(*client):
            transport.abort()
            return
        connection = self._make_connection()
        connection.set_extra_info(peername=client, proxy=self._peer)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        if rest and not transport.is_closing():
            connection.data_received(rest)


def _same_host(a: str, b: str) -> bool:
    """The same IP address (an IPv4-mapped IPv6 address is its IPv4 address)."""
    return str(client_ip(a) or a) == str(client_ip(b) or b)


async def listen(host: str, port: int, screen: Screen, *, proxy: ProxyGate | None = None,
                 backlog: int = 1024, **options: Any) -> asyncio.Server:
    """Listen like `asyncssh.create_server(**options)`, refusing what `screen` refuses first;
    with `proxy`, every connection comes through a trusted proxy and starts with its header."""
    loop = asyncio.get_running_loop()
    conn_options = await asyncssh.SSHServerConnectionOptions.construct(None, host=host, port=port, **options)

    def make_connection() -> SluisServerConnection:
        return SluisServerConnection(loop, conn_options)

    if proxy is None:
        return await loop.create_server(lambda: _Gate(screen, make_connection), host, port, backlog=backlog)
    pending = [0]
    reply = f"SSH-2.0-{options.get('server_version', 'sluis')}\r\n".encode("ascii")
    return await loop.create_server(lambda: _HeaderReader(proxy, screen, make_connection, pending, reply),
                                    host, port, backlog=backlog)

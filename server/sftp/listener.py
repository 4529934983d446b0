"""The SSH listener, and the one place where sluis overrides asyncssh's connection internals.

`asyncssh.create_server` builds an `SSHServerConnection` for every accepted socket before any
code of ours runs. We accept sockets ourselves (`loop.create_server`) so that a banned source
or a full pre-auth cap is refused with `transport.abort()`, before asyncssh is involved at all:
no version line, no key exchange, nothing allocated but the socket. An admitted socket is
handed to `SluisServerConnection` (`transport.set_protocol`), exactly as asyncssh's own
`listen()` would have done with the same options.

`SluisServerConnection` replaces three upstream behaviours of asyncssh 2.24 (pinned; the test
tests/test_preauth_units.py::test_asyncssh_internals fails if an upgrade changes them):
- `send_userauth_failure`: upstream sends USERAUTH_FAILURE with no cap on attempts. Here every
  failure counts (any method: 'none' after the first request, keyboard-interactive, unsupported
  methods, rejected keys, bad signatures, wrong passwords) and the owner may disconnect instead.
- `send_userauth_success`: upstream sends USERAUTH_SUCCESS and only then calls `auth_completed`.
  Here the owner's `login_allowed()` coroutine is awaited first (per-user session cap, and the
  `auth.success` audit record committed); if it says no, the login is refused and closed.
- `_login_timer_callback`: upstream drops the connection at the login timeout without telling
  the owner; here the owner learns it first (to penalise the source).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Protocol, cast

import asyncssh


class AuthOwner(Protocol):
    """What `SluisServerConnection` asks of its SSHServer (sftp/auth.py)."""

    def attempt_failed(self) -> bool: ...       # False: the cap is reached, disconnect

    async def login_allowed(self) -> bool: ...  # False: refuse the login that just succeeded

    def login_timed_out(self) -> None: ...


Screen = Callable[[str, int], bool]   # (host, port) -> admit? (a refusal is recorded by the screen)


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

    def _login_timer_callback(self) -> None:
        owner: Any = self._owner
        if owner is not None:
            owner.login_timed_out()
        super()._login_timer_callback()


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


async def listen(host: str, port: int, screen: Screen, *, backlog: int = 1024,
                 **options: Any) -> asyncio.Server:
    """Listen like `asyncssh.create_server(**options)`, refusing what `screen` refuses first."""
    loop = asyncio.get_running_loop()
    conn_options = await asyncssh.SSHServerConnectionOptions.construct(None, host=host, port=port, **options)
    return await loop.create_server(
        lambda: _Gate(screen, lambda: SluisServerConnection(loop, conn_options)), host, port, backlog=backlog)

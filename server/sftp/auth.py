"""Authentication and connection policy: registered keys or an argon2id password, nothing else
offered, every attempt audited with its source address and key fingerprint, every failure and
misbehaviour before login scored by the defender (docs/defender.md), and no login completes
before its `auth.success` record is committed."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from typing import Any

import asyncssh

from ..core.audit import AuditLog
from ..core.defender import Penalty
from ..core.directory import Directory, hash_password, verify_password
from ..core.dropbox import DropBox
from ..core.records import User
from ..core.session import Session
from ..logsafe import quoted
from ..core.workpool import BoundedPool, PoolBusy
from .channel import SluisSession
from .gate import EVENT_LIMIT, Gatekeeper
from .handler import SluisSFTPServer
from .inflight import InFlight
from .limits import ConnectionLimits, ProcessLimits

log = logging.getLogger("sluis.auth")

# Disconnects that mean the client broke the protocol (not merely that it went away).
PROTOCOL_DISCONNECTS = frozenset({
    asyncssh.DISC_PROTOCOL_ERROR, asyncssh.DISC_KEY_EXCHANGE_FAILED, asyncssh.DISC_MAC_ERROR,
    asyncssh.DISC_COMPRESSION_ERROR, asyncssh.DISC_PROTOCOL_VERSION_NOT_SUPPORTED,
    asyncssh.DISC_ILLEGAL_USER_NAME,
})
# (Not DISC_SERVICE_NOT_AVAILABLE: paramiko sends a new SERVICE_REQUEST before every attempt after
# the first, which asyncssh refuses; that ends the connection but is no attack. Before any
# attempt it still counts, as leaving before a login attempt.)


@functools.cache
def _decoy_hash() -> bytes:
    return hash_password(secrets.token_hex(16))


def _check_password(stored: bytes | None, password: str) -> bool:
    """Unknown users and users without a password cost an argon2id check too, so the answer's
    timing does not tell which user names exist. Runs on the password pool."""
    result = verify_password(stored or _decoy_hash(), password)
    return result and stored is not None


class SluisSSHServer(asyncssh.SSHServer):
    """One instance per connection (the owner of a listener.SluisServerConnection)."""

    def __init__(self, app: Any, gate: Gatekeeper, passwords: BoundedPool) -> None:
        # What this connection uses of the app, taken once here (not reached through it later).
        self.directory: Directory = app.directory
        self.audit: AuditLog = app.audit
        self.dropbox: DropBox = app.dropbox
        self.process_limits: ProcessLimits = app.limits
        self.max_sessions_per_user: int = app.settings.server.max_sessions_per_user
        self.gate = gate
        self.passwords = passwords
        self.inflight: InFlight = app.inflight
        self.max_auth_tries: int = app.settings.server.max_auth_tries
        self.conn: asyncssh.SSHServerConnection | None = None
        self.host = "unknown"
        self.source = "unknown"
        self.session: Session | None = None
        self._username: str | None = None
        self._user: User | None = None
        self._key: str | None = None
        self._failures = 0           # failed attempts counted against max_auth_tries
        self._requests = 0           # validate_* calls (a first bare 'none' probe is free)
        self._free_probe_used = False
        self._key_rejected: Penalty | None = None  # scored once, if the connection never logs in
        self._ended_by_server = False
        self.limits: ConnectionLimits | None = None
        self._via: dict[str, str] = {}

    # --- connection --------------------------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.inflight.opened(self)   # shutdown waits for connection_lost (and what it records)
        peer = conn.get_extra_info("peername") or ("?", 0)   # behind a proxy: the client (listener.py)
        self.host, self.source = str(peer[0]), f"{peer[0]}:{peer[1]}"
        proxy = conn.get_extra_info("proxy")
        self._via = {"via": f"{proxy[0]}:{proxy[1]}"} if proxy else {}   # the proxy that relayed it
        why = self.gate.admit(self, self.host)
        if why is not None:   # the listener screened it; only a race could get here
            self._ended_by_server = True
            conn.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._lost(exc)
        finally:
            self.inflight.closed(self)

    def _lost(self, exc: Exception | None) -> None:
        self.gate.release(self)
        code = getattr(exc, "code", None)
        if self.session:
            log.info("session %s of %s from %s ended", self.session.id, quoted(self.session.actor),
                     quoted(self.source))
            if code in PROTOCOL_DISCONNECTS:
                self.gate.protocol_error(self.host, self.source, self.session.actor, str(exc), logged_in=True)
            return
        if self._key_rejected is not None:
            # Like OpenSSH's PerSourcePenalties authfail: clients offer every key they hold, so
            # rejected keys count once, and only for a connection that never logged in.
            self.gate.penalise(self.host, self.source, self._key_rejected)
        if self._ended_by_server or exc is None:
            return
        attempted = self._requests > 0 or self._failures > 0 or self._free_probe_used
        if code in PROTOCOL_DISCONNECTS:
            self.gate.protocol_error(self.host, self.source, (self._username or "-")[:64], str(exc))
        elif not attempted:
            self.gate.protocol_error(self.host, self.source, (self._username or "-")[:64],
                                     f"left before any login attempt: {exc}")

    def terminate(self, reason: str) -> None:
        """End this connection from the server side (shutdown, account disabled)."""
        self._ended_by_server = True
        if self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, reason)

    def login_timed_out(self) -> None:
        self._ended_by_server = True
        log.info("connection from %s cut at the login timeout", self.source)
        self.gate.penalise(self.host, self.source, Penalty.LOGIN_TIMEOUT)

    # --- attempts ----------------------------------------------------------------------------------
    async def begin_auth(self, username: str) -> bool:
        self._username = username
        self._user = await asyncio.to_thread(self.directory.find_user, username)
        return True  # always require authentication, known user or not

    def _usable(self) -> User | None:
        """The user, if it may log in: active, and (for a recipient) its tenant active too."""
        user = self._user
        if user is None or not user.active or (user.tenant_id and not self.directory.tenant_by_id(user.tenant_id).active):
            return None
        return user

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def kbdint_auth_supported(self) -> bool:
        # asyncssh would otherwise offer keyboard-interactive as a password prompt; a prompt that is
        # never answered is neither success nor failure, so it would escape max_auth_tries.
        return False

    def attempt_failed(self) -> bool:
        """Every USERAUTH_FAILURE lands here (listener.py); False once max_auth_tries is reached."""
        if self._requests == 0 and not self._free_probe_used and self._failures == 0:
            self._free_probe_used = True   # the 'none' request every client starts with
            return True
        self._failures += 1
        if self._failures >= self.max_auth_tries:
            self._ended_by_server = True
            log.info("connection from %s: %d failed authentication attempts, disconnected",
                     self.source, self._failures)
            return False
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self._requests += 1
        if self._requests > 3 * self.max_auth_tries:   # key queries that succeed are no failures
            self.terminate("too many authentication requests")
            return False
        fingerprint = key.get_fingerprint("sha256")
        user = await asyncio.to_thread(self._usable)
        keys = await asyncio.to_thread(self.directory.usable_keys, user) if user else []
        if any(k.fingerprint == fingerprint for k in keys):
            self._key = fingerprint
            return True
        await self._failure(username, "publickey", fingerprint)
        return False

    async def validate_password(self, username: str, password: str) -> bool:
        self._requests += 1
        user = await asyncio.to_thread(self._usable)
        stored = user.password_hash if user and user.password_hash else None
        try:
            ok = await self.passwords.run(_check_password, stored, password)
        except PoolBusy:
            await self._failure(username, "password", None, "server busy checking passwords")
            return False
        if ok:
            self._key = None
            return True
        await self._failure(username, "password", None)
        return False

    async def _failure(self, username: str, method: str, fingerprint: str | None, why: str | None = None) -> None:
        if self._user is None:
            why = "unknown user"
        elif not self._user.active:
            why = "user disabled"
        elif await asyncio.to_thread(self._usable) is None:
            why = "tenant disabled"
        elif why is None:
            why = "key not registered" if method == "publickey" else "wrong password or no password set"
        penalty = Penalty.UNKNOWN_USER if self._user is None else Penalty.FAILURE
        if method == "publickey":
            if self._key_rejected is None or penalty is Penalty.UNKNOWN_USER:
                self._key_rejected = penalty
        else:
            self.gate.penalise(self.host, self.source, penalty)
        tenant = await asyncio.to_thread(self._tenant_name, self._user)
        await asyncio.to_thread(self.audit.record, "auth.failure", actor=username[:64],
                                tenant=tenant, source=self.source, method=method, key=fingerprint,
                                reason=why)

    def _tenant_name(self, user: User | None) -> str | None:
        return self.directory.tenant_label(user.tenant_id) if user else None

    # --- success -----------------------------------------------------------------------------------
    async def login_allowed(self) -> bool:
        """Called once a key signature or password is verified, before USERAUTH_SUCCESS is sent:
        the user's session cap, then the `auth.success` record, committed. No record, no login."""
        user = self._user
        if user is None:
            return False
        self._ended_by_server = True   # from here on the server decides how it ends
        if not self.gate.authenticate(self, user.name):
            allowed = self.max_sessions_per_user
            log.warning("login of %s from %s refused: %d sessions already", user.name, self.source, allowed)
            await asyncio.to_thread(self._record_limit, user, allowed)
            return False
        session = Session(user=user, source=self.source, key=self._key)
        try:
            await asyncio.to_thread(self._record_success, session)
        except Exception as exc:
            log.error("login of %s from %s refused: its auth.success record could not be written (%s)",
                      user.name, self.source, exc)
            return False
        self.session = session
        return True

    def _record_success(self, session: Session) -> None:
        self.audit.record("auth.success", actor=session.user.name, tenant=self._tenant_name(session.user),
                              source=self.source, method="publickey" if session.key else "password",
                              key=session.key, session=session.id, **self._via)

    def _record_limit(self, user: User, allowed: int) -> None:
        try:
            self.audit.record(EVENT_LIMIT, actor=user.name, tenant=self._tenant_name(user), source=self.source,
                                  limit="max_sessions_per_user", value=allowed + 1, allowed=allowed)
        except Exception as exc:
            log.error("could not record a refused login of %s: %s", user.name, exc)

    def session_requested(self) -> SluisSession | bool:
        if self.session is None or self.conn is None:   # not logged in (or not connected)
            return False
        session = self.session
        if self.limits is None:  # [limits] of this connection (server/sftp/limits.py)
            self.limits = self.process_limits.connection(session, self.conn)
        limits = self.limits
        limits.open_channel()  # ChannelOpenError beyond channels_per_connection
        return SluisSession(lambda chan: SluisSFTPServer(chan, self.dropbox, self.directory, self.audit,
                                                            session, limits),
                            limits.close_channel, self.inflight.track)

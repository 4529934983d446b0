"""Authentication and connection policy: registered keys or an argon2id password, nothing else
offered, every attempt audited with its source address and key fingerprint."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from typing import Any

import asyncssh

from ..core.directory import Directory, hash_password, verify_password
from ..core.records import User
from ..core.session import Session
from .channel import SluisSession
from .handler import SluisSFTPServer
from .limits import ConnectionLimits

log = logging.getLogger("sluis.auth")


@functools.cache
def _decoy_hash() -> bytes:
    return hash_password(secrets.token_hex(16))


class SluisSSHServer(asyncssh.SSHServer):
    """One instance per connection (asyncssh's server_factory)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.directory: Directory = app.directory
        self.conn: asyncssh.SSHServerConnection | None = None
        self.source = "unknown"
        self.session: Session | None = None
        self._user: User | None = None
        self._key: str | None = None
        self._failures = 0
        self.limits: ConnectionLimits | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.source = f"{peer[0]}:{peer[1]}"
        if not self.app.connections.admit(self):
            log.warning("connection from %s refused: %d connections open", self.source,
                        self.app.connections.limit)
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections, try again later")

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.connections.release(self)
        if self.session:
            log.info("session %s of %s from %s ended", self.session.id, self.session.actor, self.source)

    async def begin_auth(self, username: str) -> bool:
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

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        fingerprint = key.get_fingerprint("sha256")
        user = await asyncio.to_thread(self._usable)
        keys = await asyncio.to_thread(self.directory.keys, user) if user else []
        if any(k.fingerprint == fingerprint for k in keys):
            self._key = fingerprint
            return True
        await self._failure(username, "publickey", fingerprint)
        return False

    async def validate_password(self, username: str, password: str) -> bool:
        user = await asyncio.to_thread(self._usable)
        # Unknown users and users without a password cost an argon2id check too, so the answer's
        # timing does not tell which user names exist.
        stored = user.password_hash if user and user.password_hash else _decoy_hash()
        if await asyncio.to_thread(verify_password, stored, password) and user and user.password_hash:
            self._key = None
            return True
        await self._failure(username, "password", None)
        return False

    async def _failure(self, username: str, method: str, fingerprint: str | None) -> None:
        if self._user is None:
            why = "unknown user"
        elif not self._user.active:
            why = "user disabled"
        elif await asyncio.to_thread(self._usable) is None:
            why = "tenant disabled"
        else:
            why = "key not registered" if method == "publickey" else "wrong password or no password set"
        tenant = await asyncio.to_thread(self._tenant_name, self._user)
        await asyncio.to_thread(self.app.audit.record, "auth.failure", actor=username[:64],
                                tenant=tenant, source=self.source, method=method, key=fingerprint,
                                reason=why)
        self._failures += 1
        if self._failures >= self.app.settings.server.max_auth_tries and self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                                 "too many authentication failures")

    def _tenant_name(self, user: User | None) -> str | None:
        return self.directory.tenant_by_id(user.tenant_id).name if user and user.tenant_id else None

    def auth_completed(self) -> None:
        assert self._user is not None
        self.session = Session(user=self._user, source=self.source, key=self._key)
        # A sync callback: the audit write goes to a thread rather than blocking the loop.
        asyncio.ensure_future(asyncio.to_thread(
            self.app.audit.record, "auth.success", actor=self._user.name, tenant=self._tenant_name(self._user),
                              source=self.source, method="publickey" if self._key else "password",
                              key=self._key, session=self.session.id))

    def session_requested(self) -> SluisSession | bool:
        if self.session is None:
            return False
        session = self.session
        if self.limits is None:  # [limits] of this connection (server/sftp/limits.py)
            self.limits = self.app.limits.connection(session, self.conn)
        limits = self.limits
        limits.open_channel()  # ChannelOpenError beyond channels_per_connection
        return SluisSession(lambda chan: SluisSFTPServer(chan, self.app.dropbox, session, limits),
                            limits.close_channel)

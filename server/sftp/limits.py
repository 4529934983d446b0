"""The [limits] caps after login: what one connection and one SFTP session may hold.

`ProcessLimits` is built once (app.py) and holds what all sessions share: the settings and the
pool of key-derivation slots (scrypt costs 128 * 8 * 2**scrypt_log_n bytes a time, 1 MiB at the
default and 32 MiB at log N 15, so at most `key_derivations` run at once). `ConnectionLimits`
is per SSH connection: its channel count, and its record of broken limits and protocol errors.
The first breach of each kind on a connection is audited (`sftp.limit`, `protocol.error`); later
ones are counted and logged, and a connection that keeps on breaking them is disconnected, so
one client can neither grow the audit log nor the process's memory and descriptors (see
descriptors_needed for the arithmetic).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from typing import Any, Protocol

import asyncssh
from asyncssh.sftp import SFTPFailure, SFTPLimits

from ...config.settings import LimitSettings, Settings
from ..core.session import Session
from ..logsafe import quoted
from .inflight import InFlight

log = logging.getLogger("sluis.limits")

READ_OVERHEAD = 1024              # OpenSSH: SFTP_MAX_READ_LENGTH = SFTP_MAX_MSG_LENGTH - 1024
MAX_BREACHES = 100                # limits broken on one connection before it is disconnected
MAX_PROTOCOL_ERRORS = 10          # malformed packets on one connection before it is disconnected
RESERVED_DESCRIPTORS = 1024       # listener, database, log, threads, host keys, janitor


class Recorder(Protocol):
    """The audit call the limits need (AuditLog.record)."""

    def record(self, event: str, **kwargs: Any) -> int: ...


class TenantNames(Protocol):
    def tenant_label(self, tenant_id: int | None) -> str | None: ...


def max_read(settings: LimitSettings) -> int:
    """The most a READ returns: the message cap less room for the reply's header."""
    return settings.max_message - READ_OVERHEAD


def descriptors_needed(settings: Settings) -> int:
    """File descriptors the caps allow at most: every connection a socket, every SFTP handle one
    descriptor (a download's blob or an upload's temporary; folder handles hold none)."""
    limits = settings.limits
    per_connection = 1 + limits.channels_per_connection * limits.handles_per_session
    return settings.server.max_connections * per_connection + RESERVED_DESCRIPTORS


def raise_descriptor_limit(settings: Settings) -> str | None:
    """At start: lift the soft RLIMIT_NOFILE towards what the caps need (up to the hard limit);
    return a warning when even that is short (the unit's LimitNOFILE should match the caps)."""
    needed = descriptors_needed(settings)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < needed:
        return (f"the descriptor limit is {soft}, but [server] max_connections and [limits] allow "
                f"{needed} open at once; raise LimitNOFILE (see systemd/sluis.service) or lower the caps")
    return None


class ProcessLimits:
    """The process-wide side of the caps, shared by every connection."""

    def __init__(self, settings: LimitSettings, audit: Recorder, directory: TenantNames,
                 inflight: InFlight) -> None:
        self.settings = settings
        self.max_read = max_read(settings)
        self._audit = audit
        self._directory = directory
        self._inflight = inflight
        self._derivations: asyncio.Semaphore | None = None

    @property
    def key_derivations(self) -> asyncio.Semaphore:
        """Slots for upload opens (each runs scrypt); created on the serving loop's first use."""
        if self._derivations is None:
            self._derivations = asyncio.Semaphore(self.settings.key_derivations)
        return self._derivations

    def connection(self, session: Session, conn: asyncssh.SSHServerConnection) -> ConnectionLimits:
        return ConnectionLimits(self, session, conn)

    def record_soon(self, event: str, session: Session, **detail: Any) -> None:
        """Called on the event loop (sync asyncssh callbacks too): the write goes to a thread,
        tracked until done (shutdown waits for it)."""
        self._inflight.write_soon("audit record of a broken limit", self.record, event, session, **detail)

    def record(self, event: str, session: Session, **detail: Any) -> None:
        """Write one audit record for the session (blocks: call off the event loop)."""
        tenant_id = session.user.tenant_id
        tenant = self._directory.tenant_label(tenant_id)
        self._audit.record(event, actor=session.actor, tenant=tenant, source=session.source, **detail)


class ConnectionLimits:
    """One logged-in SSH connection: its channels, the per-session caps its SFTP sessions check,
    and its breaches."""

    def __init__(self, process: ProcessLimits, session: Session, conn: asyncssh.SSHServerConnection) -> None:
        self._process = process
        self.settings = process.settings
        self.max_message = process.settings.max_message
        self.max_read = process.max_read
        self.session = session
        self._conn = conn
        self.channels = 0
        self.breaches: Counter[str] = Counter()
        self.protocol_errors = 0
        self._loop = asyncio.get_running_loop()

    # --- channels --------------------------------------------------------------------------
    def open_channel(self) -> None:
        """Count a new session channel, or refuse it (ChannelOpenError) when the cap is reached."""
        allowed = self.settings.channels_per_connection
        if self.channels >= allowed:
            self.breach("channels_per_connection", self.channels + 1, allowed)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE,
                f"too many channels: at most {allowed} at once on one connection ([limits] channels_per_connection)")
        self.channels += 1

    def close_channel(self) -> None:
        self.channels -= 1

    # --- what an SFTP session of this connection checks -------------------------------------
    def sftp_limits(self) -> SFTPLimits:
        """The limits@openssh.com reply: message, read and write sizes, handles per session."""
        return SFTPLimits(self.max_message, self.max_read, self.max_read, self.settings.handles_per_session)

    def check_handles(self, open_now: int) -> None:
        """Refuse an open beyond handles_per_session (before it costs anything)."""
        allowed = self.settings.handles_per_session
        if open_now >= allowed:
            self.breach("handles_per_session", open_now + 1, allowed)
            raise SFTPFailure(f"too many open files: at most {allowed} at once in one session; "
                              "close one first ([limits] handles_per_session)")

    def check_uploads(self, in_progress: int) -> None:
        allowed = self.settings.uploads_per_session
        if in_progress >= allowed:
            self.breach("uploads_per_session", in_progress + 1, allowed)
            raise SFTPFailure(f"too many uploads in progress: at most {allowed} at once in one "
                              "session; finish one first ([limits] uploads_per_session)")

    def key_derivation(self) -> asyncio.Semaphore:
        """The process's key-derivation slots: an upload open holds one from before its checks
        until its key derivation (in the at-rest worker) has ended."""
        return self._process.key_derivations

    def message_too_long(self, length: int) -> None:
        self.breach("max_message", length, self.max_message)

    # --- breaches --------------------------------------------------------------------------
    def breach(self, limit: str, value: int, allowed: int) -> None:
        """A limit was broken: audit the first of its kind, count, disconnect a persistent offender."""
        if not self._on_loop():   # from a worker thread (the core refused a write)
            self._loop.call_soon_threadsafe(self.breach, limit, value, allowed)
            return
        self.breaches[limit] += 1
        count = self.breaches[limit]
        log.warning("limit broken: user=%s session=%s from=%s limit=%s value=%d allowed=%d count=%d",
                    self.session.actor, self.session.id, self.session.source, limit, value, allowed, count)
        if count == 1:
            self._audit("sftp.limit", limit=limit, value=value, allowed=allowed)
        if sum(self.breaches.values()) == MAX_BREACHES + 1:
            self.disconnect(asyncssh.DISC_BY_APPLICATION, "too many requests over the server's limits")

    def protocol_error(self, what: str) -> None:
        """A malformed SFTP packet: audit the first, disconnect after MAX_PROTOCOL_ERRORS."""
        self.protocol_errors += 1
        log.warning("protocol error: user=%s session=%s from=%s what=%s count=%d",
                    self.session.actor, self.session.id, self.session.source, quoted(what[:200]), self.protocol_errors)
        if self.protocol_errors == 1:
            self._audit("protocol.error", what=what[:200], layer="sftp")
        if self.protocol_errors == MAX_PROTOCOL_ERRORS:
            self.disconnect(asyncssh.DISC_PROTOCOL_ERROR, "too many malformed SFTP messages")

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def disconnect(self, code: int, reason: str) -> None:
        log.warning("disconnecting user=%s session=%s from=%s: %s", self.session.actor, self.session.id,
                    self.session.source, reason)
        self._conn.disconnect(code, reason)

    def _audit(self, event: str, **detail: Any) -> None:
        self._process.record_soon(event, self.session, **detail)

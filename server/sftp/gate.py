"""The pre-authentication gate: admits or refuses a new socket (bans, caps), and turns what a
connection does before logging in into penalties and audit records (docs/defender.md).

Runs on the event loop: decisions are in memory; database writes (bans, audit records) go to
threads, tracked by InFlight until done (shutdown waits for them).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from ..core.audit import AuditLog
from ..core.clock import Clock, iso
from ..core.addresses import in_networks
from ..core.defender import Defender, Penalty, Throttle, source_key
from ..logsafe import quoted
from .connections import ConnectionRegistry, Refusal
from .inflight import InFlight

log = logging.getLogger("sluis.gate")

EVENT_REFUSED = "auth.refused"
EVENT_PROTOCOL_ERROR = "protocol.error"
EVENT_LIMIT = "sftp.limit"
EVENT_TERMINATED = "session.terminated"
_RECORD_FAILED = "recording a pre-authentication event"


class Gatekeeper:
    def __init__(self, defender: Defender, registry: ConnectionRegistry, audit: AuditLog, clock: Clock,
                 inflight: InFlight, trusted_proxies: tuple[str, ...] = ()) -> None:
        self.defender = defender
        self._proxies = [ipaddress.ip_network(network) for network in trusted_proxies]
        self.registry = registry
        self._audit = audit
        self._inflight = inflight
        self._refusals = Throttle(clock)          # auth.refused: one record per address per minute
        self._protocol_errors = Throttle(clock)   # protocol.error before login: the same

    # --- admission ------------------------------------------------------------------------------
    def screen(self, host: str, port: int) -> bool:
        """Admit a connection from client `host` (the socket's peer, or the address in the PROXY
        header)? A refusal is recorded (rate-limited) here."""
        why = Refusal.BANNED if self.defender.banned(host) else self.registry.refusal(host)
        if why is Refusal.MAX_STARTUPS:
            victim = self.registry.make_room(host)
            if victim is not None:
                log.info("max_startups full: dropping a pending connection from %s for one from %s",
                         victim.source, host)
                victim.terminate("too many unauthenticated connections from your address")
                why = self.registry.refusal(host)
        if why is None:
            return True
        self._refused(host, port, why)
        return False

    def screen_proxy(self, host: str, port: int) -> bool:
        """With [server] proxy_protocol: may peer `host` send a PROXY header? Only a trusted proxy
        that is not banned; any other peer is refused (recorded as `screen` does)."""
        why = (Refusal.UNTRUSTED_PROXY if not self.is_proxy(host)
               else Refusal.BANNED if self.defender.banned(host) else None)
        if why is None:
            return True
        self._refused(host, port, why)
        return False

    def proxy_failed(self, host: str, port: int, what: str) -> None:
        """A trusted proxy sent a bad header, or none in time: penalised and recorded like any
        protocol error before authentication (the proxy's own address is the source)."""
        self.protocol_error(host, f"{host}:{port}", "-", what)

    def proxy_full(self, host: str, port: int) -> None:
        """A trusted proxy opened a connection while max_startups sockets were still reading
        their PROXY header: refused and recorded as `max_startups`."""
        self._refused(host, port, Refusal.MAX_STARTUPS)

    def is_proxy(self, host: str) -> bool:
        """Is `host` in trusted_proxies? (Then it is a proxy, never a client.)"""
        return in_networks(host, self._proxies)

    def _refused(self, host: str, port: int, why: Refusal) -> None:
        count = self._refusals.hit(source_key(host))
        if count is not None:
            log.warning("refused connections from %s: %s (%d since the last report)", host, why.value, count)
            self._inflight.write_soon(_RECORD_FAILED, self._audit.record, EVENT_REFUSED, actor="-",
                                      source=f"{host}:{port}", address=host, why=why.value, count=count)

    def admit(self, connection: Any, host: str) -> Refusal | None:
        return self.registry.admit(connection, host)

    def authenticate(self, connection: Any, user: str) -> bool:
        return self.registry.authenticate(connection, user)

    def release(self, connection: Any) -> None:
        self.registry.release(connection)

    # --- penalties ------------------------------------------------------------------------------
    def penalise(self, host: str, source: str, penalty: Penalty) -> None:
        ban = self.defender.penalise(host, penalty)
        if ban is not None:
            log.warning("banned %s until %s (score %d: %s, ban number %d)", ban.address, iso(ban.until),
                        ban.score, ban.reasons, ban.offences)
            self._inflight.write_soon("saving a ban", self.defender.save, ban, source=source)

    def protocol_error(self, host: str, source: str, actor: str, what: str, *, logged_in: bool = False) -> None:
        """A connection broke the SSH protocol, or left before trying to log in: an audit record
        (at most one per source per minute) and, before login, a penalty."""
        stage = "after authentication" if logged_in else "before authentication"
        log.info("protocol error from %s %s: %s", source, stage, quoted(what))
        if not logged_in:
            self.penalise(host, source, Penalty.PROTOCOL_ERROR)
        count = self._protocol_errors.hit(source_key(host))
        if count is not None:
            self._inflight.write_soon(_RECORD_FAILED, self._audit.record, EVENT_PROTOCOL_ERROR, actor=actor,
                                      source=source, what=what[:200], stage=stage, count=count)

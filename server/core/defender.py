"""Per-source penalties (like OpenSSH's PerSourcePenalties, SFTPGo's defender), free of SSH.

A source (an IPv4 address, or an IPv6 /64) collects a score for failed logins, unknown users,
protocol errors and login timeouts. When its score within the observation window reaches the
threshold, it is banned: a first ban lasts `ban_time`, each repeat `ban_growth` times longer,
up to `max_ban`. Allowlisted networks are never banned. Bans are kept in the state store
(`BanStore`) and in memory, where the check that refuses a connection is a dictionary lookup.
Every table here is bounded, so an attacker with many addresses cannot grow memory. See
docs/defender.md.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum

from ...config.settings import DefenderSettings
from .addresses import client_ip, in_networks
from .bans import Ban, BanStore
from .clock import Clock

MAX_TRACKED_SOURCES = 20_000   # sources with penalties inside the window; the least recent are dropped
MAX_BANS = 20_000              # bans held in memory (the latest-ending are kept)
IPV6_PREFIX = 64


class Penalty(str, Enum):
    """What a source is penalised for; the value is the name used in audit details."""

    FAILURE = "failure"                 # wrong password, or rejected keys of a connection that failed
    UNKNOWN_USER = "unknown_user"       # any attempt on a user name that does not exist
    PROTOCOL_ERROR = "protocol_error"   # malformed/out-of-order protocol, leaving before any attempt
    LOGIN_TIMEOUT = "login_timeout"     # cut at the login timeout


def source_key(address: str) -> str:
    """The unit penalties and caps apply to: the IPv4 address, or the IPv6 /64 it lies in."""
    ip = client_ip(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


@dataclass
class _Window:
    events: deque[tuple[datetime, int, str]]


class Defender:
    """Scores sources and decides bans; `banned()` and `penalise()` are cheap (safe on the event
    loop), `save()` and `load()` touch the database (call them from a thread)."""

    def __init__(self, settings: DefenderSettings, store: BanStore, clock: Clock) -> None:
        self.settings = settings
        self._store = store
        self._clock = clock
        self._allow = [ipaddress.ip_network(net) for net in settings.allowlist]
        self._scores: OrderedDict[str, _Window] = OrderedDict()
        self._bans: dict[str, Ban] = {}
        self._lock = threading.Lock()
        self._version: tuple[int, str, float] | None = None
        self._next_forget = datetime.max.replace(tzinfo=timezone.utc)
        self._scores_of = {Penalty.FAILURE: settings.score_failure, Penalty.UNKNOWN_USER: settings.score_unknown_user,
                           Penalty.PROTOCOL_ERROR: settings.score_protocol_error,
                           Penalty.LOGIN_TIMEOUT: settings.score_login_timeout}

    def allowlisted(self, address: str) -> bool:
        return in_networks(address, self._allow)

    def banned(self, address: str) -> Ban | None:
        """The ban in force on this address's source now, if any."""
        if not self.settings.enabled:
            return None
        ban = self._bans.get(source_key(address))
        if ban is not None and ban.until > self._clock.now() and not self.allowlisted(address):
            return ban
        return None

    def penalise(self, address: str, penalty: Penalty) -> Ban | None:
        """Add a penalty; returns the new ban if this one crossed the threshold (then `save` it)."""
        score = self._scores_of[penalty]
        if not self.settings.enabled or score <= 0 or self.allowlisted(address):
            return None
        key, now = source_key(address), self._clock.now()
        with self._lock:
            current = self._bans.get(key)
            if current is not None and current.until > now:
                return None   # already banned (a connection admitted just before the ban)
            window = self._scores.pop(key, None) or _Window(deque(maxlen=self.settings.threshold))
            self._scores[key] = window
            while len(self._scores) > MAX_TRACKED_SOURCES:
                self._scores.popitem(last=False)
            window.events.append((now, score, penalty.value))
            horizon = now - timedelta(seconds=self.settings.observe)
            while window.events and window.events[0][0] < horizon:
                window.events.popleft()
            total = sum(s for _, s, _ in window.events)
            if total < self.settings.threshold:
                return None
            reasons: dict[str, int] = {}
            for _, s, kind in window.events:
                reasons[kind] = reasons.get(kind, 0) + s
            del self._scores[key]
            offences = current.offences + 1 if current is not None else 1
            length = min(self.settings.ban_time * self.settings.ban_growth ** (offences - 1), self.settings.max_ban)
            until = now + timedelta(seconds=length)
            ban = Ban(address=key, banned_at=now, until=until, offences=offences, score=total, reasons=reasons,
                      forget_at=until + timedelta(seconds=self.settings.max_ban))
            self._remember(ban)
            return ban

    def save(self, ban: Ban, *, source: str | None) -> None:
        """Store a ban with its audit record (blocking)."""
        self._store.save(ban, source=source)

    def load(self) -> None:
        """Replace the bans in memory with the store's (blocking): picks up bans from before a
        restart and bans lifted with `sluis bans lift`. Reads the table only if it changed."""
        version = self._store.version()
        if version == self._version and self._clock.now() < self._next_forget:
            return
        known = self._store.known(self._clock.now(), MAX_BANS)
        self._version = self._store.version()
        self._next_forget = min((ban.forget_at for ban in known), default=datetime.max.replace(tzinfo=timezone.utc))
        with self._lock:
            fresh = {ban.address: ban for ban in known}
            # a ban decided here but not yet saved by its thread stays
            now = self._clock.now()
            for key, ban in self._bans.items():
                if key not in fresh and ban.until > now and (now - ban.banned_at).total_seconds() < 10:
                    fresh[key] = ban
            self._bans = fresh

    def _remember(self, ban: Ban) -> None:
        self._bans[ban.address] = ban
        if len(self._bans) > MAX_BANS:
            oldest = min(self._bans.values(), key=lambda b: b.forget_at)
            del self._bans[oldest.address]


class Throttle:
    """At most one event per key per `interval` seconds, with the count since the last one;
    holds at most `capacity` keys (the least recent are dropped)."""

    def __init__(self, clock: Clock, interval: float = 60, capacity: int = 10_000) -> None:
        self._clock = clock
        self._interval = timedelta(seconds=interval)
        self._capacity = capacity
        self._seen: OrderedDict[str, tuple[datetime, int]] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, key: str) -> int | None:
        """Count one occurrence; returns the count to report now, or None to stay quiet."""
        now = self._clock.now()
        with self._lock:
            last = self._seen.pop(key, None)
            if last is not None and now - last[0] < self._interval:
                self._seen[key] = (last[0], last[1] + 1)
                return None
            count = (last[1] if last else 0) + 1
            self._seen[key] = (now, 0)
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return count

"""The connection registry: every live connection, its source, whether it has logged in and as
whom, held to the caps of [server] (docs/defender.md, "Connection caps"):

- `max_connections`: all connections, logged in or not;
- `max_startups`: connections not yet logged in, from all sources together; when it is full, a
  newcomer displaces the oldest pending connection of the source holding the most (if that
  source holds at least two more than the newcomer's);
- `per_source_max_startups`: connections not yet logged in from one source (IPv6: one /64);
- `max_sessions_per_user`: logged-in connections of one user.

Only the event loop calls it. Its tables hold live connections only, so they are bounded by
`max_connections` whatever addresses the clients use.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ...config.settings import ServerSettings
from ..core.defender import source_key


class Refusal(str, Enum):
    """Why a connection is refused before authentication (the `why` of `auth.refused`)."""

    BANNED = "banned"
    MAX_CONNECTIONS = "max_connections"
    MAX_STARTUPS = "max_startups"
    PER_SOURCE_MAX_STARTUPS = "per_source_max_startups"
    UNTRUSTED_PROXY = "untrusted_proxy"   # [server] proxy_protocol: a peer not in trusted_proxies


@dataclass
class Entry:
    source: str                 # source key: IPv4 address or IPv6 /64
    user: str | None = None     # set once authenticated


class ConnectionRegistry:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._entries: dict[Any, Entry] = {}
        self._unauthenticated: dict[str, int] = {}   # source key -> connections not yet logged in
        self._unauthenticated_total = 0
        self._sessions: dict[str, int] = {}          # user -> logged-in connections

    @property
    def limit(self) -> int:
        return self.settings.max_connections

    def refusal(self, address: str) -> Refusal | None:
        """Whether a new connection from `address` would break a cap (checked before admitting)."""
        if self._unauthenticated.get(source_key(address), 0) >= self.settings.per_source_max_startups:
            return Refusal.PER_SOURCE_MAX_STARTUPS
        if self._unauthenticated_total >= self.settings.max_startups:
            return Refusal.MAX_STARTUPS
        if len(self._entries) >= self.settings.max_connections:
            return Refusal.MAX_CONNECTIONS
        return None

    def make_room(self, address: str) -> Any | None:
        """With `max_startups` full: the oldest pending connection of the source holding the most,
        if that source holds at least two more than `address`'s; it is dropped from the registry
        (the caller closes it). So a few sources cannot lock everyone else out."""
        own = self._unauthenticated.get(source_key(address), 0)
        heaviest = max(self._unauthenticated.items(), key=lambda item: item[1], default=None)
        if heaviest is None or heaviest[1] < own + 2:
            return None
        victim = next(conn for conn, entry in self._entries.items()
                      if entry.source == heaviest[0] and entry.user is None)
        self.release(victim)
        return victim

    def admit(self, connection: Any, address: str) -> Refusal | None:
        """Register a new (unauthenticated) connection, or say which cap refuses it."""
        why = self.refusal(address)
        if why is not None:
            return why
        key = source_key(address)
        self._entries[connection] = Entry(key)
        self._unauthenticated[key] = self._unauthenticated.get(key, 0) + 1
        self._unauthenticated_total += 1
        return None

    def authenticate(self, connection: Any, user: str) -> bool:
        """Mark a connection logged in as `user`; False (nothing changed) if that user already has
        `max_sessions_per_user` sessions."""
        entry = self._entries.get(connection)
        if entry is None or entry.user is not None:
            return entry is not None and entry.user == user
        if self._sessions.get(user, 0) >= self.settings.max_sessions_per_user:
            return False
        self._drop_unauthenticated(entry.source)
        entry.user = user
        self._sessions[user] = self._sessions.get(user, 0) + 1
        return True

    def release(self, connection: Any) -> None:
        entry = self._entries.pop(connection, None)
        if entry is None:
            return
        if entry.user is None:
            self._drop_unauthenticated(entry.source)
        else:
            left = self._sessions[entry.user] - 1
            if left:
                self._sessions[entry.user] = left
            else:
                del self._sessions[entry.user]

    def _drop_unauthenticated(self, key: str) -> None:
        self._unauthenticated_total -= 1
        left = self._unauthenticated[key] - 1
        if left:
            self._unauthenticated[key] = left
        else:
            del self._unauthenticated[key]

    @property
    def live(self) -> list[Any]:
        """Every live connection (a snapshot)."""
        return list(self._entries)

    @property
    def unauthenticated(self) -> int:
        return self._unauthenticated_total

    def users(self) -> set[str]:
        """The users that have at least one live session."""
        return set(self._sessions)

    def sessions_of(self, users: set[str]) -> list[Any]:
        """The live connections logged in as one of `users`."""
        return [conn for conn, entry in self._entries.items() if entry.user in users]

"""The defender's bans in the state store, so that a ban outlives a restart (docs/defender.md).

One row per penalised source (an IPv4 address or an IPv6 /64): when its current ban ends, how
many times it was banned (each repeat lasts longer) and when the row may be forgotten.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .audit import AuditLog
from .clock import iso, parse_iso
from .store import Store

EVENT_BAN = "auth.ban"
EVENT_UNBAN = "auth.unban"


@dataclass(frozen=True)
class Ban:
    address: str                   # the source key: an IPv4 address or an IPv6 /64
    banned_at: datetime
    until: datetime
    offences: int                  # 1 for a first ban, then one more for each repeat
    score: int
    reasons: dict[str, int]        # penalty kind -> score it contributed
    forget_at: datetime            # after this the row (and its offence count) is dropped

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "banned_at": iso(self.banned_at), "until": iso(self.until),
                "offences": self.offences, "score": self.score, "reasons": self.reasons,
                "forget_at": iso(self.forget_at)}


class BanStore:
    """Reads and writes the `bans` table; every ban and lift is audited in the same transaction."""

    def __init__(self, db: Store, audit: AuditLog) -> None:
        self._db = db
        self._audit = audit

    def save(self, ban: Ban, *, source: str | None) -> None:
        """Store a new ban (replacing the source's earlier row) with its `auth.ban` record."""
        with self._db.writer() as tx:
            tx.execute("INSERT INTO bans (address, banned_at, until, offences, score, reasons, forget_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (address) DO UPDATE SET"
                       " banned_at = excluded.banned_at, until = excluded.until, offences = excluded.offences,"
                       " score = excluded.score, reasons = excluded.reasons, forget_at = excluded.forget_at",
                       (ban.address, iso(ban.banned_at), iso(ban.until), ban.offences, ban.score,
                        json.dumps(ban.reasons, sort_keys=True), iso(ban.forget_at)))
            self._audit.append(tx, EVENT_BAN, actor="-", source=source, address=ban.address, score=ban.score,
                               until=iso(ban.until), reasons=ban.reasons, offences=ban.offences)

    def known(self, now: datetime, limit: int) -> list[Ban]:
        """Rows not yet forgotten, the latest-ending first (at most `limit`); forgotten rows are dropped."""
        if self._db.query_one("SELECT 1 FROM bans WHERE forget_at < ? LIMIT 1", (iso(now),)):
            with self._db.writer() as tx:   # only then: serve calls this every few seconds
                tx.execute("DELETE FROM bans WHERE forget_at < ?", (iso(now),))
        rows = self._db.query("SELECT * FROM bans ORDER BY until DESC LIMIT ?", (limit,))
        return [_ban(row) for row in rows]

    def version(self) -> tuple[int, str, float]:
        """Changes whenever a ban is added, lifted or forgotten: a cheap check before `known()`."""
        # the time of day of each `until` (HHMMSSffffff of its ISO text) summed: portable SQL
        row = self._db.query_one(
            "SELECT COUNT(*), COALESCE(MAX(banned_at), ''), COALESCE(SUM(CAST(SUBSTR(until, 12, 2) ||"
            " SUBSTR(until, 15, 2) || SUBSTR(until, 18, 2) || SUBSTR(until, 21, 6) AS BIGINT)), 0) FROM bans")
        assert row is not None
        return (int(row[0]), row[1], float(row[2]))

    def lift(self, address: str, now: datetime, *, actor: str, source: str) -> bool:
        """End a ban now (its offence count stays, so a repeat still lasts longer); audited."""
        with self._db.writer() as tx:
            row = tx.execute("SELECT until FROM bans WHERE address = ?", (address,)).fetchone()
            if row is None or parse_iso(row[0]) <= now:
                return False
            tx.execute("UPDATE bans SET until = ? WHERE address = ?", (iso(now), address))
            self._audit.append(tx, EVENT_UNBAN, actor=actor, source=source, address=address, was_until=row[0])
            return True


def _ban(row: Any) -> Ban:
    return Ban(address=row["address"], banned_at=parse_iso(row["banned_at"]), until=parse_iso(row["until"]),
               offences=row["offences"], score=row["score"], reasons=json.loads(row["reasons"]),
               forget_at=parse_iso(row["forget_at"]))

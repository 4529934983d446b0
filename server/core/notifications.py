"""A small durable queue of notifications (incident alerts, DPO notices): one row per message,
written in the transaction that decides to send it, so a crash between deciding and sending
loses nothing; the sender retries until the channel accepts it or refuses it for good.

Key messages keep their own outbox (keydelivery/outbox.py): they carry a sealed passphrase
and a delivery; these messages carry neither.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta
from typing import ContextManager

from .audit import AuditLog
from .clock import Clock, iso
from .store import Store, Tx

class Channel(enum.StrEnum):
    EMAIL = "email"
    SMS = "sms"


class NotificationState(enum.StrEnum):
    PENDING = "pending"   # due at next_attempt_at
    SENT = "sent"         # the channel accepted it
    FAILED = "failed"     # refused for good (logged as an error)


EMAIL, SMS = Channel.EMAIL, Channel.SMS
CHANNELS = tuple(Channel)
PENDING, SENT, FAILED = NotificationState.PENDING, NotificationState.SENT, NotificationState.FAILED
DUE_BATCH = 50
BODY_MAX = 4000


@dataclass(frozen=True)
class Notification:
    id: int
    channel: Channel
    target: str
    subject: str
    body: str
    topic: str        # what it is about, e.g. "incident 3" or "dpo genk": for the log and audit
    state: NotificationState
    attempts: int
    next_attempt_at: str
    last_error: str | None
    sent_at: str | None


class NotificationQueue:
    """Repository of the `notifications` table; each state change leaves an audit record."""

    def __init__(self, db: Store, audit: AuditLog, clock: Clock) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock

    def exclusive(self) -> ContextManager[bool]:
        """Held by one sender at a time across processes (True), else False at once, so that two
        processes never send the same message."""
        return self.db.try_lock("notifications")

    def enqueue(self, tx: Tx, channel: str, target: str, body: str, *, topic: str, subject: str = "") -> int:
        """Queue one message inside the caller's transaction; it is due at once."""
        if channel not in CHANNELS:
            raise ValueError(f"unknown notification channel {channel!r}")
        now = iso(self.clock.now())
        cur = tx.execute("INSERT INTO notifications (channel, target, subject, body, topic, state, attempts,"
                         " next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?) RETURNING id",
                         (channel, target, subject, body[:BODY_MAX], topic, PENDING, now, now))
        return int(cur.fetchone()[0])

    def topics_since(self, tx: Tx, prefix: str, since: str) -> int:
        """How many distinct topics starting with `prefix` were queued since `since` (for a rate cap)."""
        return tx.execute("SELECT COUNT(DISTINCT topic) FROM notifications WHERE topic LIKE ? AND created_at >= ?",
                          (prefix + "%", since)).fetchone()[0]

    def due(self, limit: int = DUE_BATCH) -> list[Notification]:
        rows = self.db.query("SELECT * FROM notifications WHERE state = ? AND next_attempt_at <= ?"
                             " ORDER BY id LIMIT ?", (PENDING, iso(self.clock.now()), limit))
        return [_notification(r) for r in rows]

    def all(self, topic: str | None = None) -> list[Notification]:
        where, params = ("topic = ?", (topic,)) if topic else ("1 = 1", ())
        return [_notification(r) for r in self.db.query(f"SELECT * FROM notifications WHERE {where} ORDER BY id",
                                                        params)]

    def mark_sent(self, note: Notification, provider_id: str | None = None) -> None:
        with self.db.writer() as tx:
            tx.execute("UPDATE notifications SET state = ?, attempts = attempts + 1, sent_at = ?, last_error = NULL"
                       " WHERE id = ? AND state = ?", (SENT, iso(self.clock.now()), note.id, PENDING))
            self.audit.append(tx, "notify.sent", actor="sluis", notification=note.id, channel=note.channel,
                              topic=note.topic, attempt=note.attempts + 1, provider_id=provider_id)

    def retry(self, note: Notification, error: str, wait_seconds: float) -> None:
        later = iso(self.clock.now() + timedelta(seconds=wait_seconds))
        with self.db.writer() as tx:
            tx.execute("UPDATE notifications SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                       " WHERE id = ? AND state = ?", (error[:500], later, note.id, PENDING))
            self.audit.append(tx, "notify.retry", actor="sluis", notification=note.id, channel=note.channel,
                              topic=note.topic, attempt=note.attempts + 1, error=error[:200])

    def mark_failed(self, note: Notification, error: str) -> None:
        with self.db.writer() as tx:
            tx.execute("UPDATE notifications SET state = ?, attempts = attempts + 1, last_error = ?"
                       " WHERE id = ? AND state = ?", (FAILED, error[:500], note.id, PENDING))
            self.audit.append(tx, "notify.failed", actor="sluis", notification=note.id, channel=note.channel,
                              topic=note.topic, attempt=note.attempts + 1, error=error[:200])


def _notification(row) -> Notification:
    return Notification(id=row["id"], channel=Channel(row["channel"]), target=row["target"], subject=row["subject"],
                        body=row["body"], topic=row["topic"], state=NotificationState(row["state"]), attempts=row["attempts"],
                        next_attempt_at=row["next_attempt_at"], last_error=row["last_error"],
                        sent_at=row["sent_at"])

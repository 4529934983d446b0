"""The janitor: collected files leave after the grace period, uncollected ones expire, keys are
destroyed, orphans are swept and old audit records pruned. It removes through DropBox.remove,
the same path a recipient's delete takes, so every removal has one audit record with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from ..config.settings import Settings
from ..keydelivery.outbox import Outbox
from ..server.core.clock import Clock, iso
from ..server.core.deliveries import COLLECTED, PUBLISHED, REASON_COLLECTED, REASON_EXPIRED, fetch
from ..server.core.dropbox import DropBox

log = logging.getLogger("sluis.janitor")
ACTOR = "janitor"


@dataclass
class JanitorReport:
    removed_collected: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    orphans: int = 0
    keys_destroyed: int = 0
    audit_pruned: int = 0

    def summary(self) -> str:
        return (f"removed {len(self.removed_collected)} collected, expired {len(self.expired)}, "
                f"swept {self.orphans} orphans, destroyed {self.keys_destroyed} keys, "
                f"pruned {self.audit_pruned} audit records")


class Janitor:
    def __init__(self, settings: Settings, dropbox: DropBox, outbox: Outbox, clock: Clock) -> None:
        self.settings = settings
        self.dropbox = dropbox
        self.outbox = outbox
        self.clock = clock

    def run_once(self) -> JanitorReport:
        report = JanitorReport()
        now = self.clock.now()
        retention = self.settings.retention
        grace_cutoff = iso(now - timedelta(seconds=retention.collected_grace))
        for delivery in fetch(self.dropbox.db, "state = ? AND collected_at <= ?", (COLLECTED, grace_cutoff)):
            if self.dropbox.remove(delivery, REASON_COLLECTED, actor=ACTOR,
                                   collected_at=delivery.collected_at, collected_by=delivery.collected_by):
                report.removed_collected.append(delivery.id)
        for delivery in fetch(self.dropbox.db, "state = ? AND expires_at <= ?", (PUBLISHED, iso(now))):
            if self.dropbox.remove(delivery, REASON_EXPIRED, actor=ACTOR, expires_at=delivery.expires_at):
                report.expired.append(delivery.id)
                self._tell_sender(delivery)
        report.orphans = self.dropbox.sweep_orphans()
        report.keys_destroyed = self._destroy_keys()
        report.audit_pruned = self.dropbox.audit.prune(
            iso(now - timedelta(seconds=retention.audit_keep)), actor=ACTOR)
        if any((report.removed_collected, report.expired, report.orphans, report.keys_destroyed,
                report.audit_pruned)):
            log.info("janitor: %s", report.summary())
        return report

    def _tell_sender(self, delivery) -> None:
        """An expired delivery was never collected: the sender (and operator) should know."""
        sender = self.dropbox.db.query_one("SELECT name, email FROM users WHERE id = ?", (delivery.sender_id,))
        reason = (f"not collected before {delivery.expires_at}; the file expired and was removed "
                  f"(sender {sender['name']})")
        with self.dropbox.db.writer() as tx:
            self.outbox.alert(tx, delivery.id, phone="-", sender=sender["name"], reason=reason)
            if sender["email"]:
                self.outbox.alert(tx, delivery.id, to=sender["email"], phone="-", sender=sender["name"],
                                  reason=reason)
        self.outbox.wake()

    def _destroy_keys(self) -> int:
        destroyed = 0
        for row in self.dropbox.db.query("SELECT delivery_id FROM secrets"):
            with self.dropbox.db.writer() as tx:
                destroyed += self.outbox.destroy_if_done(tx, row[0])
        return destroyed

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
from ..server.core import deliveries
from ..server.core.audit import AuditLog
from ..server.core.clock import Clock, iso
from ..server.core.deliveries import REASON_COLLECTED, REASON_EXPIRED
from ..server.core.directory import Directory
from ..server.core.dropbox import DropBox
from ..server.core.records import Delivery
from ..server.core.store import Store

log = logging.getLogger("sluis.janitor")
ACTOR = "janitor"
LOCK = "janitor"   # one janitor at a time, whichever process or node runs it


@dataclass
class JanitorReport:
    removed_collected: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    orphans: int = 0
    interrupted: int = 0     # uploads of nodes whose lease passed (server/core/nodes.py)
    keys_destroyed: int = 0
    audit_pruned: int = 0
    skipped: bool = False    # another janitor was running: this pass did nothing

    def summary(self) -> str:
        if self.skipped:
            return "another janitor is running: nothing done"
        return (f"removed {len(self.removed_collected)} collected, expired {len(self.expired)}, "
                f"removed {self.interrupted} uploads of gone nodes, swept {self.orphans} orphans, destroyed {self.keys_destroyed} keys, "
                f"pruned {self.audit_pruned} audit records")


class Janitor:
    def __init__(self, settings: Settings, db: Store, dropbox: DropBox, outbox: Outbox, directory: Directory,
                 audit: AuditLog, clock: Clock) -> None:
        self.settings = settings
        self.db = db
        self.dropbox = dropbox
        self.outbox = outbox
        self.directory = directory
        self.audit = audit
        self.clock = clock

    def run_once(self) -> JanitorReport:
        """One pass, if no other janitor (another process, another node) is in one now."""
        with self.db.try_lock(LOCK) as held:
            if not held:
                log.info("janitor: another janitor is running; skipped")
                return JanitorReport(skipped=True)
            return self._run()

    def _run(self) -> JanitorReport:
        report = JanitorReport()
        now = self.clock.now()
        retention = self.settings.retention
        grace_cutoff = iso(now - timedelta(seconds=retention.collected_grace))
        for delivery in deliveries.collected_before(self.db, grace_cutoff):
            if self.dropbox.remove(delivery, REASON_COLLECTED, actor=ACTOR,
                                   collected_at=delivery.collected_at, collected_by=delivery.collected_by):
                report.removed_collected.append(delivery.id)
        for delivery in deliveries.expired_by(self.db, iso(now)):
            if self.dropbox.remove(delivery, REASON_EXPIRED, actor=ACTOR, expires_at=delivery.expires_at):
                report.expired.append(delivery.id)
                self._tell_sender(delivery)
        report.interrupted = self.dropbox.sweep_stale_uploads()   # before the orphans: their temporaries go with them
        report.orphans = self.dropbox.sweep_orphans()
        report.keys_destroyed = self._destroy_keys()
        report.audit_pruned = self.audit.prune(
            iso(now - timedelta(seconds=retention.audit_keep)), actor=ACTOR)
        if any((report.removed_collected, report.expired, report.interrupted, report.orphans, report.keys_destroyed,
                report.audit_pruned)):
            log.info("janitor: %s", report.summary())
        return report

    def _tell_sender(self, delivery: Delivery) -> None:
        """An expired delivery was never collected: the sender (and operator) should know."""
        sender = self.directory.user_by_id(delivery.sender_id)
        reason = (f"not collected before {delivery.expires_at}; the file expired and was removed "
                  f"(sender {sender.name})")
        with self.db.writer() as tx:
            self.outbox.alert(tx, delivery.id, phone="-", sender=sender.name, reason=reason)
            if sender.email:
                self.outbox.alert(tx, delivery.id, to=sender.email, phone="-", sender=sender.name, reason=reason)
        self.outbox.wake()

    def _destroy_keys(self) -> int:
        return sum(self.outbox.destroy_done_key(delivery_id) for delivery_id in self.outbox.sealed_deliveries())

"""Incidents, derived from the audit log: the other parts only emit audit events.

The tracker reads the records after its cursor, in batches, and for the kinds in RULES opens an
incident or counts the event into the open incident of the same kind and the same source
address or account. Opening one queues an alert to the security contact (e-mail and SMS) in the
same transaction, so a crash cannot lose it. Changes to a tenant's phones or recipients queue a
notice to that tenant's DPO. The cursor keeps the hash of the record it stopped at: if that
record vanishes or changes, or the log's head falls behind the cursor, the log was cut and an
`audit.broken` incident opens. See docs/incidents.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from ..config.settings import Settings
from ..server.core.clock import Clock, iso, parse_iso
from ..server.core.incidents import Entry, Incident, IncidentStore
from ..server.core.notifications import EMAIL, SMS, NotificationQueue
from ..server.core.records import ROLE_RECIPIENT
from ..server.core.store import Tx
from ..server.logsafe import quoted
from .alerts import alert, describe, dpo_notice

log = logging.getLogger("sluis.incidents")
CURSOR = "incidents"
BATCH = 500
MAX_BATCHES = 20           # per pass: a flood is worked off over several passes, never in one long hold
SYSTEM_ACTORS = ("sluis", "", "-")


@dataclass(frozen=True)
class Rule:
    by_address: bool
    by_account: bool
    threshold: bool = False   # opens only once [incidents] auth_failures is reached


RULES: dict[str, Rule] = {
    "auth.failure": Rule(by_address=True, by_account=True, threshold=True),
    "auth.ban": Rule(by_address=True, by_account=False),
    "auth.refused": Rule(by_address=True, by_account=False),
    "protocol.error": Rule(by_address=True, by_account=True),
    "sftp.deny": Rule(by_address=True, by_account=True),
    "sftp.limit": Rule(by_address=True, by_account=True),
    "audit.broken": Rule(by_address=False, by_account=False),
}
DPO_EVENTS = ("tenant.change", "user.add", "user.disable", "user.key.add", "user.key.remove")


def address_of(source: str | None) -> str | None:
    """'192.0.2.7:50122' -> '192.0.2.7'; admin sources ('cli:…', 'demo') are no address."""
    if not source or source.startswith("cli") or source in ("demo", "test", "unknown"):
        return None
    host, sep, port = source.rpartition(":")
    return host.strip("[]") if sep and port.isdigit() else source


class IncidentTracker:
    """One `run_once` pass turns the new audit records into incidents, alerts and DPO notices."""

    def __init__(self, settings: Settings, store: IncidentStore, queue: NotificationQueue, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.clock = clock

    def run_once(self) -> int:
        """Process what is new (up to MAX_BATCHES batches); returns how many records were read.
        Nothing while another process's tracker is in a pass."""
        with self.store.exclusive() as held:
            return self._pass() if held else 0

    def _pass(self) -> int:
        read = 0
        for _ in range(MAX_BATCHES):
            with self.store.writer() as tx:
                done = self._batch(tx)
            read += done
            if done < BATCH:
                break
        return read

    def _batch(self, tx: Tx) -> int:
        seq, digest = self.store.cursor(tx, CURSOR)
        head, head_hash = self.store.head(tx)
        if seq and self._cut(tx, seq, digest, head):
            self.store.set_cursor(tx, CURSOR, head, head_hash)
            return 0
        entries = self.store.entries_after(tx, seq, BATCH)
        for entry, _hash in entries:
            self._consider(tx, entry)
        if entries:
            self.store.set_cursor(tx, CURSOR, entries[-1][0].seq, entries[-1][1])
        return len(entries)

    def _cut(self, tx: Tx, seq: int, digest: str | None, head: int) -> bool:
        """True (and an incident opened) if the log no longer holds what the cursor last saw."""
        if head < seq:
            reason = f"the log ends at #{head}, but the incidents tracker had read up to #{seq} (truncated)"
        else:
            found = self.store.hash_at(tx, seq)
            if found is None or found == digest:
                return False  # pruned by the janitor (vouched for by audit.prune), or intact
            reason = f"record #{seq} changed after the incidents tracker read it"
        entry = Entry(seq=head, ts=iso(self.clock.now()), event="audit.broken", actor="sluis", tenant=None,
                      source=None, detail={"seq": seq, "reason": reason})
        log.error("audit log cut: %s", reason)
        self._raise(tx, entry, RULES["audit.broken"])
        return True

    def _consider(self, tx: Tx, entry: Entry) -> None:
        if entry.event in DPO_EVENTS:
            self._tell_dpo(tx, entry)
        rule = RULES.get(entry.event)
        if rule is not None:
            self._raise(tx, entry, rule)

    def _raise(self, tx: Tx, entry: Entry, rule: Rule) -> None:
        address = address_of(entry.source) if rule.by_address else None
        account = entry.actor[:64] if rule.by_account and entry.actor not in SYSTEM_ACTORS else None
        dpo = self.store.dpo(tx, entry.tenant)
        existing = self.store.find_open(tx, entry.event, address, account)
        if existing is not None:
            self.store.touch(tx, existing, entry, dpo)
            return
        count = 1
        if rule.threshold:
            since = iso(parse_iso(entry.ts) - timedelta(seconds=self.settings.incidents.auth_window))
            count = max(self.store.failures(tx, event=entry.event, address=address, account=account,
                                            since=since, through=entry.seq))
            if count < self.settings.incidents.auth_failures:
                return
        incident = self.store.open(tx, entry, address=address, account=account, count=count,
                                   what=describe(entry, self.settings.incidents.language, count), dpo=dpo)
        log.warning("incident #%d opened: %s (source %s, account %s, tenant %s); report before %s",
                    incident.id, incident.what, address or "-", quoted(account), entry.tenant or "-",
                    incident.deadline)
        self._alert(tx, incident)

    def _alert(self, tx: Tx, incident: Incident) -> None:
        topic = f"incident {incident.id}"
        cap = self.settings.incidents.max_alerts
        sent = self.queue.topics_since(tx, "incident ", iso(self.clock.now() - timedelta(hours=1)))
        if sent >= cap:
            log.error("incident #%d: not alerted, %d alerts went out in the last hour ([incidents] max_alerts); "
                      "see sluis incidents", incident.id, sent)
            return
        subject, body, sms = alert(incident, self.settings.incidents.language, last=sent + 1 == cap)
        mail_to = self.settings.incidents.email or self.settings.email.operator
        queued = False
        if self.settings.email.enabled and mail_to:
            self.queue.enqueue(tx, EMAIL, mail_to, body, subject=subject, topic=topic)
            queued = True
        if self.settings.incidents.phone:
            self.queue.enqueue(tx, SMS, self.settings.incidents.phone, sms, topic=topic)
            queued = True
        if not queued:
            log.error("incident #%d: no security contact to alert (set [incidents] email or phone)", incident.id)

    def _tell_dpo(self, tx: Tx, entry: Entry) -> None:
        if not (entry.tenant and self.settings.email.enabled):
            return
        d = entry.detail
        if entry.event == "tenant.change" and not (d.get("phones_added") or d.get("phones_removed")):
            return
        if entry.event == "user.add" and d.get("role") != ROLE_RECIPIENT:
            return
        dpo = self.store.dpo(tx, entry.tenant)
        if dpo is None or not dpo.email:
            return
        subject, body = dpo_notice(entry, entry.tenant, self.settings.incidents.language)
        self.queue.enqueue(tx, EMAIL, dpo.email, body, subject=subject, topic=f"dpo {entry.tenant}")

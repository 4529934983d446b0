"""Reporting unauthorized access attempts: failed logins and denied requests since the last
report, at most every `[monitor] report_interval`, to the log (WARNING) and the operator's
mailbox. The protocol (art. 6) wants attempts reported to the agency within 24 hours."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta
from typing import Callable, ContextManager

from ..config.settings import Settings
from ..keydelivery.mail import send_mail
from ..keydelivery.providers.base import ProviderError
from ..keydelivery.worker import mail_server
from ..server.core.audit import AuditLog
from ..server.core.clock import Clock, iso

log = logging.getLogger("sluis.monitor")
ATTEMPTS = ("auth.failure", "sftp.deny")
REPORT = "monitor.report"
LOCK = "monitor"


class AccessMonitor:
    def __init__(self, settings: Settings, audit: AuditLog, clock: Clock,
                 exclusive: Callable[[str], ContextManager[bool]]) -> None:
        """`exclusive(name)`: the store's try_lock, so one monitor reports at a time across processes."""
        self.settings = settings
        self.audit = audit
        self.clock = clock
        self.exclusive = exclusive

    def run_once(self) -> int:
        """Report new attempts if the last report is old enough; returns how many were reported.
        Nothing while another process's monitor is in a pass (one report, not one per process)."""
        with self.exclusive(LOCK) as held:
            return self._pass() if held else 0

    def _pass(self) -> int:
        last = self.audit.latest(REPORT)
        now = self.clock.now()
        if last and last.ts > iso(now - timedelta(seconds=self.settings.monitor.report_interval)):
            return 0
        since_seq = int(last.detail.get("through_seq", 0)) if last else 0
        rows = self.audit.events_after(since_seq, ATTEMPTS)
        if not rows:
            return 0
        by_kind = Counter(r.event for r in rows)
        by_source = Counter((r.source or "-").rsplit(":", 1)[0] for r in rows)
        by_actor = Counter(r.actor for r in rows)
        summary = (f"{by_kind['auth.failure']} failed logins and {by_kind['sftp.deny']} denied requests since "
                   f"{last.ts if last else 'the start'}; sources: "
                   + ", ".join(f"{s} ({n})" for s, n in by_source.most_common(10))
                   + "; accounts: " + ", ".join(f"{a} ({n})" for a, n in by_actor.most_common(10)))
        log.warning("access report: %s", summary)
        mail = mail_server(self.settings)
        if mail is not None and self.settings.email.operator:
            body = ("sluis: pogingen tot ongeoorloofde toegang / unauthorized access attempts\n\n" + summary +
                    "\n\nDetails: sluis audit export --json | grep -E 'auth.failure|sftp.deny'\n")
            try:
                send_mail(mail, to=[self.settings.email.operator],
                          subject=f"sluis: {len(rows)} toegangspogingen geweigerd", body=body)
            except ProviderError as exc:
                log.error("access report could not be mailed (will retry): %s", exc)
                return 0
        self.audit.record(REPORT, actor="sluis", attempts=len(rows), through_seq=rows[-1].seq,
                          failed_logins=by_kind["auth.failure"], denied=by_kind["sftp.deny"],
                          mailed=bool(mail and self.settings.email.operator))
        return len(rows)

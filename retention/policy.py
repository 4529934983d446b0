"""The protocol's delivery rules: a tenant receives a list only while its data-sharing protocol
is in force, at most `yearly_limit` lists per 365 days, and one list waits at a time: a re-upload
under the waiting file's name before collection is a correction that replaces it and does not
count again; a file of another name is refused until the waiting one is collected or withdrawn
(docs/policy.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ..config.settings import PolicySettings
from ..server.core import deliveries
from ..server.core.clock import Clock, iso, parse_iso
from ..server.core.protocols import Protocol, load_protocol, notice_end, open_allowance, use_allowance
from ..server.core.records import Delivery, Tenant
from ..server.core.store import Reader
from ..server.errors import PolicyRefused

__all__ = ["ListWaiting", "Protocol", "YearlyPolicy", "load_protocol", "notice_end"]
YEAR = timedelta(days=365)


class ListWaiting(PolicyRefused):
    """Another file still waits for the tenant: one list waits at a time (no silent replacement)."""

    def __init__(self, tenant: Tenant, waiting: Delivery, name: str | None) -> None:
        self.tenant = tenant
        self.waiting = waiting
        self.name = name
        published = parse_iso(waiting.created_at).strftime("%Y-%m-%d %H:%M UTC")
        super().__init__(
            f"{tenant.name} still has a list waiting: {waiting.name!r}, published {published}, not yet "
            f"collected; one list waits per municipality, so {name!r} was not accepted. To replace the "
            f"waiting list, upload the new one under the same name {waiting.name!r} (a correction: the "
            f"old file is removed and its key revoked), or let its sender withdraw it first "
            f"(rm /{tenant.name}/{waiting.name})")


class YearlyPolicy:
    """`DeliveryPolicy` for the drop-box core."""

    def __init__(self, settings: PolicySettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock

    def admit(self, conn: Reader, tenant: Tenant, delivery_id: str | None = None,
              name: str | None = None) -> list[Delivery]:
        """Raise PolicyRefused, or return the pending deliveries an upload named `name` replaces.

        A pending delivery of another name refuses the upload (ListWaiting); `name` None asks
        only whether the tenant may receive something now (`standing`). With `delivery_id`
        (inside the publishing transaction) an exception granted by an operator is used up by
        that delivery.
        """
        now = self.clock.now()
        protocol = load_protocol(conn, tenant.id)
        if protocol is None:
            raise PolicyRefused(f"no data-sharing protocol is registered for {tenant.name}; "
                                "a list can only be sent while one is in force")
        if not protocol.in_force(now.date()):
            raise PolicyRefused(f"the data-sharing protocol with {tenant.name} is not in force: "
                                f"{protocol.describe(now.date())}")
        pending = deliveries.waiting(conn, tenant.id)
        if pending:
            other = [d for d in pending if name is not None and d.name != name]
            if other:
                raise ListWaiting(tenant, other[0], name)
            return pending  # a correction under the same name: replaces what waits, counts once
        counted = deliveries.collected_since(conn, tenant.id, iso(now - YEAR))
        if len(counted) < self.settings.yearly_limit:
            return []
        allowance = open_allowance(conn, tenant.id, iso(now - YEAR))
        if allowance is None:
            raise PolicyRefused(
                f"{tenant.name} received its list on {_day(parse_iso(counted[-1].created_at))}; at most "
                f"{self.settings.yearly_limit} per 365 days, so the next is allowed from "
                f"{_minute_after(self._next_date(counted))}")
        if delivery_id is not None:
            # only ever inside the publishing transaction (dropbox.publish passes its Tx)
            use_allowance(conn, allowance, delivery_id)
        return []

    def _next_date(self, counted: list[Delivery]) -> datetime:
        """The count drops below the limit when the (count - limit + 1)-th oldest leaves the window."""
        return parse_iso(counted[len(counted) - self.settings.yearly_limit].created_at) + YEAR

    def standing(self, conn: Reader, tenant: Tenant) -> str:
        """One line for `tenant show` and `status`: may the tenant receive a list now?"""
        if not tenant.active:  # its folder is gone: uploads fail whatever the protocol says
            return f"refused: {tenant.name} is disabled"
        try:
            replaces = self.admit(conn, tenant)
        except PolicyRefused as refusal:
            return f"refused: {refusal}"
        return "a correction would replace the pending delivery" if replaces else "may receive a list now"


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _minute_after(moment: datetime) -> str:
    """The first whole minute at which a window ending at `moment` (inclusive) has passed.

    Only the day would be wrong for most of that day: a delivery made at 14:00 leaves the
    window at 14:00 a year later, and an upload that morning would be refused while being
    told it was allowed 'from' that very day.
    """
    after = (moment + timedelta(microseconds=1))
    if after.second or after.microsecond:
        after = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return after.strftime("%Y-%m-%d %H:%M UTC")

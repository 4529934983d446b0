"""Reading deliveries from the state store; states and their meaning are in docs/deliveries.md."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from .records import Delivery
from .store import Reader, Row, Tx


class DeliveryState(enum.StrEnum):
    PUBLISHED = "published"   # stored, key sent or on its way, waiting for the municipality
    COLLECTED = "collected"   # read completely by a recipient; removed after the grace period
    REMOVED = "removed"       # gone from storage, key destroyed; removed_reason says why


class RemovalReason(enum.StrEnum):
    DELETED = "deleted"        # a recipient deleted it
    WITHDRAWN = "withdrawn"    # the sender deleted it before collection
    REPLACED = "replaced"      # a correction replaced it before collection
    COLLECTED = "collected"    # removed after collection + grace
    EXPIRED = "expired"        # nobody collected it in time
    ADMIN = "admin"            # an operator removed it


# The names the rest of the code has always used.
PUBLISHED, COLLECTED, REMOVED = DeliveryState.PUBLISHED, DeliveryState.COLLECTED, DeliveryState.REMOVED
VISIBLE = (PUBLISHED, COLLECTED)
REASON_DELETED = RemovalReason.DELETED
REASON_WITHDRAWN = RemovalReason.WITHDRAWN
REASON_REPLACED = RemovalReason.REPLACED
REASON_COLLECTED = RemovalReason.COLLECTED
REASON_EXPIRED = RemovalReason.EXPIRED
REASON_ADMIN = RemovalReason.ADMIN


def delivery_from_row(row: Row) -> Delivery:
    fields = {key: row[key] for key in row.keys() if key in Delivery.__dataclass_fields__}
    fields["state"] = DeliveryState(fields["state"])
    if fields.get("removed_reason"):
        fields["removed_reason"] = RemovalReason(fields["removed_reason"])
    return Delivery(**fields)


def fetch(conn: Reader, where: str, params: tuple[Any, ...] = ()) -> list[Delivery]:
    """Deliveries matching an SQL condition, oldest first (`conn` is a Store or a Tx). For
    repositories in server/core; elsewhere use the named queries below."""
    rows = conn.execute(f"SELECT * FROM deliveries WHERE {where} ORDER BY created_at", params).fetchall()
    return [delivery_from_row(row) for row in rows]


def by_id(conn: Reader, delivery_id: str) -> Delivery | None:
    found = fetch(conn, "id = ?", (delivery_id,))
    return found[0] if found else None


def listing(conn: Reader, *, include_removed: bool) -> list[Delivery]:
    """Every delivery not yet removed (or every one), oldest first: for `sluis status`."""
    return fetch(conn, "1 = 1") if include_removed else fetch(conn, "state != ?", (str(REMOVED),))


def waiting(conn: Reader, tenant_id: int) -> list[Delivery]:
    """The tenant's published, uncollected deliveries (one at most, by the policy)."""
    return fetch(conn, "tenant_id = ? AND state = ?", (tenant_id, str(PUBLISHED)))


def collected_since(conn: Reader, tenant_id: int, since: str) -> list[Delivery]:
    """The tenant's deliveries published since `since` and collected: what the yearly limit counts."""
    return fetch(conn, "tenant_id = ? AND created_at >= ? AND collected_at IS NOT NULL", (tenant_id, since))


def collected_before(conn: Reader, cutoff: str) -> list[Delivery]:
    """Collected deliveries whose grace period ended at `cutoff`."""
    return fetch(conn, "state = ? AND collected_at <= ?", (str(COLLECTED), cutoff))


def expired_by(conn: Reader, now: str) -> list[Delivery]:
    """Published deliveries nobody collected before they expired."""
    return fetch(conn, "state = ? AND expires_at <= ?", (str(PUBLISHED), now))


_COLUMNS = tuple(field.name for field in dataclasses.fields(Delivery))


def insert(tx: Tx, delivery: Delivery) -> None:
    """Store a new delivery: every column named, in the order of the `Delivery` record."""
    tx.execute(f"INSERT INTO deliveries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
               tuple(getattr(delivery, name) for name in _COLUMNS))

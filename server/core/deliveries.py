"""Reading deliveries from the state store; states and their meaning are in docs/deliveries.md."""

from __future__ import annotations

from typing import Any

from .records import Delivery
from .store import Reader, Row

PUBLISHED = "published"   # stored, key sent or on its way, waiting for the municipality
COLLECTED = "collected"   # read completely by a recipient; removed after the grace period
REMOVED = "removed"       # gone from storage, key destroyed; removed_reason says why
VISIBLE = (PUBLISHED, COLLECTED)

REASON_DELETED = "deleted"        # a recipient deleted it
REASON_WITHDRAWN = "withdrawn"    # the sender deleted it before collection
REASON_REPLACED = "replaced"      # a correction replaced it before collection
REASON_COLLECTED = "collected"    # removed after collection + grace
REASON_EXPIRED = "expired"        # nobody collected it in time
REASON_ADMIN = "admin"            # an operator removed it


def delivery_from_row(row: Row) -> Delivery:
    return Delivery(**{key: row[key] for key in row.keys() if key in Delivery.__dataclass_fields__})


def fetch(conn: Reader, where: str, params: tuple[Any, ...] = ()) -> list[Delivery]:
    """Deliveries matching an SQL condition, oldest first (`conn` is a Store or a Tx)."""
    rows = conn.execute(f"SELECT * FROM deliveries WHERE {where} ORDER BY created_at", params).fetchall()
    return [delivery_from_row(row) for row in rows]

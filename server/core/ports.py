"""What the drop-box core asks of the parts around it (key delivery, receipts, the list policy):
Protocols only, implemented in keydelivery/, core/receipts.py and retention/, wired in app.py."""

from __future__ import annotations

from typing import Any, Protocol

from .records import Delivery, Tenant
from .store import Store, Tx


class KeyHandoff(Protocol):
    """What the core asks of key delivery, always inside the transaction that changes state."""

    def enqueue(self, tx: Tx, delivery: Delivery, tenant: Tenant, passphrase: str) -> int: ...
    def revoke(self, tx: Tx, delivery_id: str, reason: str) -> None: ...
    def collected(self, tx: Tx, delivery_id: str) -> None: ...
    def wake(self) -> None: ...


class ReceiptIssuer(Protocol):
    """Signs the receipt of a delivery that just ended, inside the transaction that ends it."""

    def issue(self, tx: Tx, delivery_id: str, audit_seq: int) -> object: ...
    def for_sender(self, sender_id: int) -> list[Any]: ...
    def of_sender(self, sender_id: int, delivery_id: str) -> Any: ...


class DeliveryPolicy(Protocol):
    """The protocol's rules: may this tenant receive a file of this name now, and what does it
    replace? Raises PolicyRefused (with the message the sender sees) when it may not."""

    def admit(self, conn: Tx | Store, tenant: Tenant, delivery_id: str | None = None,
              name: str | None = None) -> list[Delivery]: ...

"""Plain records read from the state store. Frozen: change goes through the store."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: deliveries.py reads records and defines the states
    from .deliveries import DeliveryState, RemovalReason


class Role(enum.StrEnum):
    SENDER = "sender"         # agency staff or a script: uploads, no tenant
    RECIPIENT = "recipient"   # municipal staff: collects from exactly one tenant


class Format(enum.StrEnum):
    AGE = "age"   # age, scrypt recipient (the default)
    ZIP = "zip"   # an AES-256 zip for 7-Zip users


ROLE_SENDER, ROLE_RECIPIENT = Role.SENDER, Role.RECIPIENT
ROLES = tuple(Role)
FORMATS = tuple(Format)


@dataclass(frozen=True)
class Tenant:
    """A municipality and its drop box."""

    id: int
    name: str
    nis: str | None
    format: str
    email: str | None
    active: bool
    phones: tuple[str, ...]
    dpo_name: str | None = None    # the municipality's data protection officer (protocol)
    dpo_email: str | None = None
    dpo_phone: str | None = None

    @property
    def dpo(self) -> str | None:
        """The DPO as one line ('name <e-mail>, phone'), or None if none is recorded."""
        parts = [p for p in (self.dpo_name, f"<{self.dpo_email}>" if self.dpo_email else None,
                             self.dpo_phone) if p]
        return " ".join(parts) if parts else None

    @property
    def box_key(self) -> str:
        """The drop box's storage prefix derives from the id, never from a client's name."""
        return f"t{self.id:06d}"


@dataclass(frozen=True)
class User:
    """A person or script that logs in over SFTP."""

    id: int
    name: str
    role: Role
    tenant_id: int | None
    active: bool
    password_hash: bytes | None
    function: str = ""   # the function profile (protocol art. 4): why this person has access
    email: str | None = None   # where a sender's expiry notices and receipts go


@dataclass(frozen=True)
class UserKey:
    id: int
    user_id: int
    fingerprint: str
    public_key: str
    comment: str
    added_at: str = ""
    expires_at: str | None = None   # ISO timestamp; the key no longer logs in from then on


@dataclass(frozen=True)
class Delivery:
    """One published file for one tenant (see docs/deliveries.md for its states)."""

    id: str
    tenant_id: int
    sender_id: int
    name: str            # the name the sender wrote
    stored_name: str     # what recipients see: name + .age or .zip
    format: str
    state: DeliveryState
    plain_size: int
    stored_size: int
    plain_sha256: str
    stored_sha256: str
    blob_key: str
    created_at: str
    expires_at: str
    collected_at: str | None
    collected_by: str | None
    collected_from: str | None
    removed_at: str | None
    removed_reason: RemovalReason | None

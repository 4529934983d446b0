"""Plain records read from the state store. Frozen: change goes through the store."""

from __future__ import annotations

from dataclasses import dataclass

ROLE_SENDER = "sender"
ROLE_RECIPIENT = "recipient"
ROLES = (ROLE_SENDER, ROLE_RECIPIENT)
FORMATS = ("age", "zip")


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

    @property
    def box_key(self) -> str:
        """The drop box's storage prefix derives from the id, never from a client's name."""
        return f"t{self.id:06d}"


@dataclass(frozen=True)
class User:
    """A person or script that logs in over SFTP."""

    id: int
    name: str
    role: str
    tenant_id: int | None
    active: bool
    password_hash: bytes | None


@dataclass(frozen=True)
class UserKey:
    id: int
    user_id: int
    fingerprint: str
    public_key: str
    comment: str


@dataclass(frozen=True)
class Delivery:
    """One published file for one tenant (see docs/deliveries.md for its states)."""

    id: str
    tenant_id: int
    sender_id: int
    name: str            # the name the sender wrote
    stored_name: str     # what recipients see: name + .age or .zip
    format: str
    state: str
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
    removed_reason: str | None

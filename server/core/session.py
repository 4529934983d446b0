"""Who is acting: a logged-in user, from where. The core's notion of a session, free of SFTP."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from .records import ROLE_RECIPIENT, ROLE_SENDER, User


@dataclass(frozen=True)
class Session:
    user: User
    source: str                      # "ip:port" of the client
    key: str | None = None           # SHA256 fingerprint used to log in, if a key
    id: str = field(default_factory=lambda: secrets.token_hex(6))

    @property
    def is_sender(self) -> bool:
        return self.user.role == ROLE_SENDER

    @property
    def is_recipient(self) -> bool:
        return self.user.role == ROLE_RECIPIENT

    @property
    def actor(self) -> str:
        return self.user.name

"""age v1 (C2SP age), streaming: the at-rest format of sluis uploads, and files for partners.

Recipients: scrypt (passphrase), X25519 (`age1...`), mlkem768x25519 (`age1pq1...`, where the
installed `cryptography` provides ML-KEM-768). Reading also accepts ASCII armor.
"""

from .errors import (
    AgeArmorError,
    AgeError,
    AgeHeaderError,
    AgeHMACError,
    AgeNoMatchError,
    AgePayloadError,
    AgeWorkFactorError,
)
from .hybrid import HybridIdentity, HybridRecipient
from .keys import Identity, Recipient, parse_identity, parse_recipient
from .reader import AgeReader, decrypt
from .scrypt import DEFAULT_LOG_N, DEFAULT_MAX_LOG_N
from .stream import CHUNK_SIZE
from .writer import AgeWriter
from .x25519 import X25519Identity, X25519Recipient
from .xwing import AVAILABLE as MLKEM_AVAILABLE

__all__ = [
    "AgeArmorError",
    "AgeError",
    "AgeHeaderError",
    "AgeHMACError",
    "AgeNoMatchError",
    "AgePayloadError",
    "AgeReader",
    "AgeWorkFactorError",
    "AgeWriter",
    "CHUNK_SIZE",
    "DEFAULT_LOG_N",
    "DEFAULT_MAX_LOG_N",
    "HybridIdentity",
    "HybridRecipient",
    "Identity",
    "MLKEM_AVAILABLE",
    "Recipient",
    "X25519Identity",
    "X25519Recipient",
    "decrypt",
    "parse_identity",
    "parse_recipient",
]

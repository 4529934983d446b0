"""Identities and recipients: parsing their text forms, and age's rule for trying them.

    AGE-SECRET-KEY-1...      X25519 identity         age1...     X25519 recipient
    AGE-SECRET-KEY-PQ-1...   mlkem768x25519 identity age1pq1...  mlkem768x25519 recipient
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from . import bech32, hybrid
from .errors import AgeNoMatchError
from .header import Stanza
from .hybrid import HybridIdentity, HybridRecipient
from .x25519 import X25519Identity, X25519Recipient


class Identity(Protocol):
    """Something that can unwrap a file key from the stanzas addressed to it."""

    def unwrap(self, stanzas: tuple[Stanza, ...]) -> bytes | None:
        """The file key, None if no stanza is for us; AgeHeaderError if one of ours is malformed."""
        ...


class Recipient(Protocol):
    """Something that can wrap a file key into a stanza."""

    def wrap(self, file_key: bytes) -> Stanza:
        """A new stanza sealing `file_key`."""
        ...


def parse_identity(text: str) -> X25519Identity | HybridIdentity:
    """Parse an `AGE-SECRET-KEY-1...` or `AGE-SECRET-KEY-PQ-1...` line; ValueError otherwise."""
    text = text.strip()
    hrp, _ = bech32.decode(text)
    if hrp == hybrid.IDENTITY_HRP.lower():
        return HybridIdentity.parse(text)
    return X25519Identity.parse(text)


def parse_recipient(text: str) -> X25519Recipient | HybridRecipient:
    """Parse an `age1...` or `age1pq1...` public key; ValueError otherwise."""
    text = text.strip()
    hrp, _ = bech32.decode(text)
    if hrp == hybrid.RECIPIENT_HRP:
        return HybridRecipient.parse(text)
    return X25519Recipient.parse(text)


def unwrap_file_key(stanzas: tuple[Stanza, ...], identities: Sequence[Identity]) -> bytes:
    """Try each identity in turn, as age does: the first file key found wins.

    An identity that finds none of its stanzas open says so (None) and the next one is tried; a
    malformed stanza of a type one of them knows raises at once, failing the whole file.
    """
    for identity in identities:
        file_key = identity.unwrap(stanzas)
        if file_key is not None:
            return file_key
    raise AgeNoMatchError("no identity opens any stanza of this file")

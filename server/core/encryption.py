"""Encryptors: the plaintext stream of an upload in, the stored (encrypted) format out.

Each format writes to a `HashingOutput`, which counts what reaches storage and digests it: all
of it for zip, the header and chunk tags for age (measured in issue 12: a SHA-256 of every stored
byte cost about 1 s of CPU per GiB uploaded, a fifth of the upload's server CPU).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from ..formats.age.stream import ENCRYPTED_CHUNK_SIZE as AGE_ENCRYPTED_CHUNK
from ..formats.age.stream import NONCE_SIZE as AGE_NONCE_SIZE
from ..formats.age.stream import TAG_SIZE as AGE_TAG_SIZE
from .storage import TempBlob

SUFFIXES = {"age": ".age", "zip": ".zip"}


class HashingOutput:
    """A write-only file object over a TempBlob that keeps the size and the stored digest of what
    it wrote: the SHA-256 of every byte, or, for age (`authenticators_only`), the SHA-256 of what
    authenticates the file (header, nonce and each chunk's tag; see `age_stored_digest`)."""

    def __init__(self, temp: TempBlob) -> None:
        self._temp = temp
        self._hash = hashlib.sha256()
        self._tags_only = False
        self.size = 0

    def authenticators_only(self) -> None:
        """For AgeWriter, whose first write is the header and nonce and each later write one
        sealed chunk: hash the first whole, of the others only their 16-byte tag."""
        self._tags_only = True

    def write(self, data: bytes) -> int:
        self._temp.write(data)
        if self._tags_only and self.size:
            self._hash.update(memoryview(data)[-AGE_TAG_SIZE:])
        else:
            self._hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def age_stored_digest(stored: bytes) -> str:
    """The stored digest of an age file, from the file alone: SHA-256 over the header (through
    its MAC line), the 16-byte payload nonce and the tag (last 16 bytes) of every sealed chunk.
    Each tag authenticates its chunk, the MAC the header, so this names the exact stored file at
    a 4000th of the hashing cost of a SHA-256 over all of it (docs/deliveries.md)."""
    end = stored.index(b"\n", stored.index(b"\n--- ") + 1) + 1 + AGE_NONCE_SIZE
    digest = hashlib.sha256(stored[:end])
    for at in range(end, len(stored), AGE_ENCRYPTED_CHUNK):
        chunk = stored[at:at + AGE_ENCRYPTED_CHUNK]
        digest.update(chunk[-AGE_TAG_SIZE:])
    return digest.hexdigest()


class Encryptor(Protocol):
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


def open_encryptor(fmt: str, out: HashingOutput, passphrase: str, *, name: str,
                   scrypt_log_n: int) -> Encryptor:
    """Start the stored format `fmt` for one upload. Runs scrypt: call it off the event loop."""
    if fmt == "age":
        from ..formats.age import AgeWriter

        out.authenticators_only()
        return AgeWriter(out, passphrase, log_n=scrypt_log_n)
    if fmt == "zip":
        from ..formats.zipaes import ZipAesWriter

        return ZipAesWriter(out, passphrase, name)
    raise ValueError(f"unknown stored format {fmt!r}")

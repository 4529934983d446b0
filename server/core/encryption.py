"""Encryptors: the plaintext stream of an upload in, the stored (encrypted) format out.

Each format writes to a `HashingOutput`, which counts and hashes exactly what reaches storage.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from .storage import TempBlob

SUFFIXES = {"age": ".age", "zip": ".zip"}


class HashingOutput:
    """A write-only file object over a TempBlob that keeps the SHA-256 and size of what it wrote."""

    def __init__(self, temp: TempBlob) -> None:
        self._temp = temp
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self._temp.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class Encryptor(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...
    def close(self) -> None: ...


def open_encryptor(fmt: str, out: HashingOutput, passphrase: str, *, name: str,
                   scrypt_log_n: int) -> Encryptor:
    """Start the stored format `fmt` for one upload. Runs scrypt: call it off the event loop."""
    if fmt == "age":
        from ..formats.age import AgeWriter

        return AgeWriter(out, passphrase, log_n=scrypt_log_n)
    if fmt == "zip":
        from ..formats.zipaes import ZipAesWriter

        return ZipAesWriter(out, passphrase, name)
    raise ValueError(f"unknown stored format {fmt!r}")

"""What the streaming encryptors write to: anything with `write(bytes)` (a file, a hashing temp)."""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    """A write-only byte destination; the encryptors need nothing else of it. `write` must not keep
    a reference to what it is given: the age writer reuses its output buffer."""

    def write(self, data: bytes | memoryview, /) -> object: ...

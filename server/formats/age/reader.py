"""AgeReader: decrypt a stream chunk by chunk, releasing a chunk only once it authenticates."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import BinaryIO

from . import scrypt
from .armor import dearmor
from .errors import AgeHeaderError, AgePayloadError
from .header import FILE_KEY_SIZE, parse_header, verify_header_mac
from .keys import Identity, parse_identity, unwrap_file_key
from .scrypt import DEFAULT_MAX_LOG_N
from .stream import ENCRYPTED_CHUNK_SIZE, NONCE_SIZE, StreamOpener, payload_key


def _read_up_to(inp: BinaryIO, size: int) -> bytes:
    """Read `size` bytes, or fewer only at end of file (pipes and sockets return short reads)."""
    parts: list[bytes] = []
    remaining = size
    while remaining:
        part = inp.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


class AgeReader:
    """Streaming age decryptor for a passphrase, identities (X25519, mlkem768x25519) or a file key.

    The header is parsed, unwrapped and MAC-checked in the constructor, so a wrong key or a
    damaged header fails before any plaintext exists. Payload errors surface from read_chunk().
    With `armored=True` the input is ASCII armor (armor.py), checked as it is read.
    Every released chunk has passed its tag, but the file is only valid once `done` is true:
    a consumer must discard what it received if any call raises.
    """

    def __init__(
        self,
        inp: BinaryIO,
        passphrase: str | None = None,
        *,
        identities: Sequence[Identity | str] | None = None,
        file_key: bytes | None = None,
        max_log_n: int = DEFAULT_MAX_LOG_N,
        armored: bool = False,
    ) -> None:
        if sum(x is not None for x in (passphrase, identities, file_key)) != 1:
            raise TypeError("give exactly one of passphrase, identities or file_key")
        if file_key is not None and len(file_key) != FILE_KEY_SIZE:
            raise ValueError(f"file key must be {FILE_KEY_SIZE} bytes")
        keys: list[Identity] = []
        if identities is not None:
            if isinstance(identities, str):
                raise TypeError("identities must be a list of keys, not one string")
            if not identities:
                raise ValueError("give at least one identity")
            keys = [parse_identity(i) if isinstance(i, str) else i for i in identities]
        if armored:
            inp = dearmor(inp)
        header = parse_header(inp)
        # Checked even with a known file key: a header mixing scrypt with other stanzas is
        # invalid whatever key we hold.
        scrypt.check_alone(header.stanzas)
        if passphrase is not None:
            file_key = scrypt.unwrap(header.stanzas, passphrase.encode("utf-8"), max_log_n)
        elif file_key is None:
            file_key = unwrap_file_key(header.stanzas, keys)
        verify_header_mac(file_key, header)
        nonce = _read_up_to(inp, NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise AgeHeaderError("file ends before the 16-byte payload nonce")
        self._inp = inp
        self._opener = StreamOpener(payload_key(file_key, nonce))
        # Bytes read past the current chunk (at most one): they reveal trailing data after a
        # full final chunk without a further read.
        self._lookahead = b""
        self._done = False
        self._failure: AgePayloadError | None = None
        self._plaintext_bytes = 0

    @property
    def done(self) -> bool:
        """True once the final chunk has been authenticated: the plaintext is complete."""
        return self._done

    @property
    def plaintext_bytes(self) -> int:
        """Plaintext bytes released so far, all of them authenticated."""
        return self._plaintext_bytes

    def read_chunk(self) -> bytes:
        """Return the next authenticated plaintext chunk, or b"" after the final chunk."""
        if self._failure is not None:
            # After a failure nothing more is released, even if later chunks would open.
            raise self._failure
        if self._done:
            return b""
        try:
            chunk = self._next_chunk()
        except AgePayloadError as exc:
            self._failure = exc
            raise
        self._plaintext_bytes += len(chunk)
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        """Yield authenticated chunks until the final one; an empty file yields nothing."""
        while True:
            chunk = self.read_chunk()
            if chunk:
                yield chunk
            elif self._done:
                return

    def _next_chunk(self) -> bytes:
        """Read one sealed chunk plus one byte of lookahead, and authenticate it."""
        data = self._lookahead + _read_up_to(self._inp, ENCRYPTED_CHUNK_SIZE + 1 - len(self._lookahead))
        sealed, self._lookahead = data[:ENCRYPTED_CHUNK_SIZE], data[ENCRYPTED_CHUNK_SIZE:]
        # A stream cut at a chunk boundary ends with a chunk sealed as not final: it is released
        # (its tag is good), and the next call finds no final chunk and fails.
        plaintext, last = self._opener.open(sealed)
        if last:
            if self._lookahead:
                # The final chunk authenticated, so it is released (as age does, and as the
                # test vectors expect); the bytes after it fail the file on the next call.
                self._failure = AgePayloadError("trailing data after the final chunk")
            else:
                self._done = True
        return plaintext


def decrypt(
    inp: BinaryIO,
    out: BinaryIO,
    passphrase: str | None = None,
    *,
    identities: Sequence[Identity | str] | None = None,
    max_log_n: int = DEFAULT_MAX_LOG_N,
    armored: bool = False,
) -> int:
    """Decrypt `inp` into `out` and return the plaintext size.

    On error `out` holds the authenticated chunks before the failing one: the caller must
    discard it, because the file as a whole is not valid.
    """
    reader = AgeReader(inp, passphrase, identities=identities, max_log_n=max_log_n, armored=armored)
    for chunk in reader:
        out.write(chunk)
    return reader.plaintext_bytes

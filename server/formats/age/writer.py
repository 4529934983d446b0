"""AgeWriter: encrypt a stream to a passphrase or to public keys, holding at most one chunk."""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType

from . import scrypt
from .header import FILE_KEY_SIZE, Stanza, encode_header
from .hybrid import HybridRecipient
from .keys import Recipient, parse_recipient
from .scrypt import DEFAULT_LOG_N
from .stream import CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE, NONCE_SIZE, StreamSealer, payload_key
from ..sink import Sink


def _stanzas(
    file_key: bytes, passphrase: str | None, recipients: Sequence[Recipient | str] | None, log_n: int
) -> list[Stanza]:
    """One scrypt stanza for a passphrase (it must be alone), else one stanza per recipient."""
    if (passphrase is None) == (recipients is None):
        raise TypeError("give exactly one of passphrase or recipients")
    if passphrase is not None:
        return [scrypt.make_stanza(file_key, passphrase.encode("utf-8"), log_n)]
    assert recipients is not None
    if isinstance(recipients, str):
        raise TypeError("recipients must be a list of keys, not one string")
    if not recipients:
        raise ValueError("give at least one recipient")
    keys = [parse_recipient(r) if isinstance(r, str) else r for r in recipients]
    # Spec: "the same file SHOULD NOT be encrypted to both this [post-quantum] recipient type
    # and to other non-quantum-resistant recipient types" — the weaker key would decide.
    post_quantum = [isinstance(k, HybridRecipient) for k in keys]
    if any(post_quantum) and not all(post_quantum):
        raise ValueError("do not mix age1pq (post-quantum) recipients with other recipient types")
    return [k.wrap(file_key) for k in keys]


# Chunks sealed into one output buffer and written at once (1 MiB): the writer's memory stays
# bounded whatever the size of one write.
BATCH_CHUNKS = 16


class AgeWriter:
    """Streaming age encryptor; writes header and nonce on creation.

    Give a passphrase (one scrypt stanza, as for our uploads) or recipients: `age1...` /
    `age1pq1...` strings or Recipient objects, each getting its own stanza.
    """

    def __init__(
        self,
        out: Sink,
        passphrase: str | None = None,
        *,
        recipients: Sequence[Recipient | str] | None = None,
        log_n: int = DEFAULT_LOG_N,
    ) -> None:
        # Spec: "The file key MUST be generated as 16 bytes of CSPRNG output." Same for the
        # nonce: a fresh one per file keeps payload keys unique.
        file_key = os.urandom(FILE_KEY_SIZE)
        stanzas = _stanzas(file_key, passphrase, recipients, log_n)
        nonce = os.urandom(NONCE_SIZE)
        self._out = out
        self._sealer = StreamSealer(payload_key(file_key, nonce))
        self._buffer = bytearray()
        self._out_buffer = bytearray()
        self._ciphertext_bytes = 0
        self._plaintext_bytes = 0
        self._closed = False
        self._emit(encode_header(file_key, stanzas) + nonce)

    @property
    def ciphertext_bytes(self) -> int:
        """Bytes written to `out` so far (header, nonce and sealed chunks)."""
        return self._ciphertext_bytes

    @property
    def plaintext_bytes(self) -> int:
        """Plaintext bytes accepted by write() so far."""
        return self._plaintext_bytes

    @property
    def buffered_bytes(self) -> int:
        """Plaintext held back, never more than one chunk."""
        return len(self._buffer)

    def write(self, data: bytes | memoryview) -> None:
        """Accept plaintext; seal a full chunk only once more data shows it is not the last."""
        if self._closed:
            raise ValueError("write to a closed AgeWriter")
        view = memoryview(data).cast("B")
        self._plaintext_bytes += len(view)
        if self._buffer:
            # Top up the held-back chunk. Once it is full and more data follows, it is not the
            # final chunk and can be sealed. We cannot seal it earlier: the final chunk must
            # carry the last-chunk flag, and a full chunk may turn out to be the final one.
            take = CHUNK_SIZE - len(self._buffer)
            self._buffer += view[:take]
            view = view[take:]
            if not view:
                return
            self._emit(self._sealer.seal(bytes(self._buffer), last=False))
            self._buffer.clear()
        # Whole chunks with more data after them are sealed straight from the caller's buffer,
        # BATCH_CHUNKS at a time, into one output buffer written with one call: storage and hash
        # see one write per batch, whatever the size of the caller's writes.
        while len(view) > CHUNK_SIZE:
            count = min((len(view) - 1) // CHUNK_SIZE, BATCH_CHUNKS)
            out = self._batch_buffer(count * ENCRYPTED_CHUNK_SIZE)
            self._sealer.seal_full_into(view[:count * CHUNK_SIZE], out)
            self._emit(out)
            view = view[count * CHUNK_SIZE:]
        self._buffer += view   # at most one chunk: it may be the final one

    def close(self) -> None:
        """Seal the final chunk. Does not close `out`, which belongs to the caller."""
        if self._closed:
            return
        self._emit(self._sealer.seal(bytes(self._buffer), last=True))
        self._buffer.clear()
        self._closed = True

    def __enter__(self) -> AgeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Only finish the file on success: sealing a final chunk after an error would turn a
        # truncated upload into a valid-looking, complete file.
        if exc_type is None:
            self.close()

    def _batch_buffer(self, size: int) -> memoryview:
        """A view of `size` bytes of the writer's reused output buffer. Reuse is safe because a
        Sink must not keep what it is given past `write` (files, hashes and S3 parts copy it)."""
        if len(self._out_buffer) < size:
            self._out_buffer = bytearray(size)
        return memoryview(self._out_buffer)[:size]

    def _emit(self, data: bytes | memoryview) -> None:
        """Write everything to `out`, counting it."""
        self._out.write(data)
        self._ciphertext_bytes += len(data)

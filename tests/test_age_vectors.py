"""The age format (sluis.server.formats.age) against the C2SP CCTV vectors and our own cases.

Part 1 runs every CCTV vector as it asks: with its passphrases, else its identities (X25519 and
mlkem768x25519), else its file key; armored ones through the armor reader. None is skipped.

Part 2 is our writer against our reader: chunk boundaries, bounded buffering, tampering.
"""

from __future__ import annotations

import io
import os
import tracemalloc

import pytest

from sluis.server.formats.age import (
    CHUNK_SIZE,
    AgeHeaderError,
    AgeHMACError,
    AgeNoMatchError,
    AgePayloadError,
    AgeReader,
    AgeWorkFactorError,
    AgeWriter,
    decrypt,
)
from tests.support.agevectors import (
    ARMOR_FAILURE,
    EMPTY_SHA256,
    HEADER_FAILURE,
    NO_MATCH,
    load_vector,
    run_reader,
    run_vector,
    vector_names,
)

# --- Part 1: the CCTV vectors -------------------------------------------------------------------

# Observed: 143 vectors (33 armored, 28 X25519/mlkem768x25519-specific), all checked.
MIN_CHECKED_VECTORS = 143

ALL_VECTORS = vector_names()

# Header failures that come from the X25519 / mlkem768x25519 stanza rules (argument count, share
# or enc size and encoding, all-zero shared secret, body length). A passphrase-only reader ignores
# those stanzas, as the spec says it must, so for it these files are "no match".
STANZA_RULE_FAILURES = {
    "x25519_extra_argument",
    "x25519_identity",
    "x25519_long_file_key",
    "x25519_long_share",
    "x25519_low_order",
    "x25519_not_canonical_share",
    "x25519_short_share",
    "hybrid_extra_argument",
    "hybrid_identity",
    "hybrid_long_file_key",
    "hybrid_long_share",
    "hybrid_low_order",
    "hybrid_not_canonical_enc",
    "hybrid_short_share",
    "hybrid_x25519_arg",
}
# Header failures found after unwrapping (the payload nonce is missing or short): with only a
# passphrase, a header with no scrypt stanza is "no match" before the nonce is ever read.
NONCE_VECTORS = {"stream_no_nonce", "stream_short_nonce"}


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_vector(name: str) -> None:
    """Decrypt as the vector says and compare the result and the released-plaintext hash."""
    vector = load_vector(name)
    outcome = run_vector(vector)
    context = f"{vector.name} ({'; '.join(vector.comments)}): {outcome.error}"
    assert outcome.result == vector.expect, context
    # Vectors without a payload line release nothing: every such failure is before the payload.
    assert outcome.released_sha256 == (vector.payload or EMPTY_SHA256), context


def test_every_vector_is_checked() -> None:
    print(f"{len(ALL_VECTORS)} of {len(ALL_VECTORS)} age vectors checked")
    assert len(ALL_VECTORS) >= MIN_CHECKED_VECTORS
    # Every vector runs through test_vector with no skip; these kinds are all present.
    kinds = {n.split("_")[0] for n in ALL_VECTORS}
    assert {"armor", "x25519", "hybrid", "scrypt", "stream", "hmac", "stanza"} <= kinds
    assert (STANZA_RULE_FAILURES | NONCE_VECTORS) <= set(ALL_VECTORS)


def test_identities_recover_the_vector_file_key() -> None:
    """Where a vector succeeds with identities, the file key we unwrap is the one it names."""
    checked = 0
    for name in ALL_VECTORS:
        vector = load_vector(name)
        if vector.expect != "success" or not vector.identities or vector.file_key is None:
            continue
        by_key = run_reader(vector.age_file, file_key=vector.file_key, armored=vector.armored)
        by_identity = run_reader(vector.age_file, identities=vector.identities, armored=vector.armored)
        assert by_key == by_identity, name
        checked += 1
    assert checked >= 15


PASSPHRASE_ONLY_CASES = [n for n in ALL_VECTORS if not load_vector(n).passphrases]


@pytest.mark.parametrize("name", PASSPHRASE_ONLY_CASES)
def test_passphrase_on_other_recipients(name: str) -> None:
    """With only a passphrase, a header without an scrypt stanza is "no match" (as age says),
    unless it is malformed in a way any parser must see (a header failure) or its armor is bad."""
    vector = load_vector(name)
    if vector.expect == ARMOR_FAILURE:
        expected = ARMOR_FAILURE
    elif vector.expect == HEADER_FAILURE and name not in STANZA_RULE_FAILURES | NONCE_VECTORS:
        expected = HEADER_FAILURE
    else:
        expected = NO_MATCH
    outcome = run_reader(vector.age_file, passphrase="password", armored=vector.armored)
    assert outcome.result == expected, outcome.error
    assert outcome.released_sha256 == EMPTY_SHA256


# --- Part 2: our writer against our reader ---------------------------------------------------

# The minimum writing work factor keeps these tests fast; the default is exercised against age.
FAST = 10
PASSPHRASE = "correct horse battery staple"


def encrypt(data: bytes, *, pieces: int | None = None, passphrase: str = PASSPHRASE) -> bytes:
    """Encrypt `data` with AgeWriter, in one write or in `pieces` uneven writes."""
    out = io.BytesIO()
    writer = AgeWriter(out, passphrase, log_n=FAST)
    if pieces is None:
        writer.write(data)
    else:
        cuts = sorted({0, len(data), *(len(data) * i * i // (pieces * pieces) for i in range(pieces))})
        for start, end in zip(cuts, cuts[1:]):
            writer.write(data[start:end])
    writer.close()
    assert writer.ciphertext_bytes == len(out.getvalue())
    return out.getvalue()


def read_all(blob: bytes, passphrase: str = PASSPHRASE) -> tuple[list[bytes], Exception | None]:
    """Read with AgeReader; return the chunks released and the error that stopped it, if any."""
    chunks: list[bytes] = []
    try:
        for chunk in AgeReader(io.BytesIO(blob), passphrase):
            chunks.append(chunk)
    except Exception as exc:  # noqa: BLE001 - the test inspects the type
        return chunks, exc
    return chunks, None


def header_size(blob: bytes) -> int:
    """Length of header + nonce in one of our files."""
    return blob.index(b"\n--- ") + len(b"\n--- ") + 43 + 1 + 16


def expected_chunks(size: int) -> int:
    """Chunks the spec prescribes: an empty file has one, otherwise ceil(size / 64 KiB)."""
    return max(1, -(-size // CHUNK_SIZE))


SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE + 7]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("pieces", [None, 7])
def test_round_trip_and_chunk_layout(size: int, pieces: int | None) -> None:
    data = os.urandom(size)
    blob = encrypt(data, pieces=pieces)
    # A full last chunk is sealed as the final chunk, never followed by an empty one.
    assert len(blob) == header_size(blob) + size + 16 * expected_chunks(size)
    chunks, error = read_all(blob)
    assert error is None
    assert b"".join(chunks) == data
    assert all(len(c) == CHUNK_SIZE for c in chunks[:-1])
    assert len(chunks) == (expected_chunks(size) if size else 0)


def test_decrypt_helper_counts_bytes() -> None:
    data = os.urandom(CHUNK_SIZE + 5)
    out = io.BytesIO()
    assert decrypt(io.BytesIO(encrypt(data)), out, PASSPHRASE) == len(data)
    assert out.getvalue() == data


def test_writer_holds_back_a_full_chunk_until_more_data_comes() -> None:
    out = io.BytesIO()
    writer = AgeWriter(out, PASSPHRASE, log_n=FAST)
    start = writer.ciphertext_bytes
    assert start == len(out.getvalue()) > 0  # header and nonce are written immediately
    writer.write(b"a" * CHUNK_SIZE)
    # It could still be the final chunk, so it must not be sealed yet.
    assert writer.ciphertext_bytes == start
    assert writer.buffered_bytes == CHUNK_SIZE
    writer.write(b"b")
    assert writer.ciphertext_bytes == start + CHUNK_SIZE + 16
    assert writer.buffered_bytes == 1
    writer.close()
    assert writer.ciphertext_bytes == start + CHUNK_SIZE + 16 + 1 + 16


def test_writer_never_buffers_more_than_one_chunk() -> None:
    out = io.BytesIO()
    writer = AgeWriter(out, PASSPHRASE, log_n=FAST)
    for size in [1, CHUNK_SIZE, 3, 5 * CHUNK_SIZE + 11, CHUNK_SIZE - 1, 2]:
        writer.write(os.urandom(size))
        assert 0 < writer.buffered_bytes <= CHUNK_SIZE


def test_a_held_back_chunk_does_not_push_later_data_off_the_batch_path() -> None:
    """A partial chunk is topped up and sealed, then whole chunks go 16 at a time: writes of
    255 KiB (OpenSSH's), never chunk-aligned, reach storage in a few writes, not one per chunk."""
    writes: list[int] = []

    class Sink:
        def write(self, b: bytes | memoryview) -> int:
            writes.append(len(b))
            return len(b)

    data = os.urandom(20 * CHUNK_SIZE + 1)
    writer = AgeWriter(Sink(), PASSPHRASE, log_n=FAST)
    del writes[:]
    writer.write(data[:1])
    writer.write(memoryview(data)[1:])
    assert writes == [CHUNK_SIZE + 16, 16 * (CHUNK_SIZE + 16), 3 * (CHUNK_SIZE + 16)]
    assert writer.buffered_bytes == 1
    writer.close()
    out = io.BytesIO()
    check = AgeWriter(out, PASSPHRASE, log_n=FAST)
    for at in range(0, len(data), 261_120):
        check.write(memoryview(data)[at:at + 261_120])
    check.close()
    assert decrypt(io.BytesIO(out.getvalue()), plain := io.BytesIO(), PASSPHRASE) == len(data)
    assert plain.getvalue() == data


def test_writer_memory_is_bounded() -> None:
    """A 4 MiB write allocates one output batch (16 chunks) and the final chunk's buffers, not a
    copy of the data (64 chunks)."""
    data = os.urandom(64 * CHUNK_SIZE)

    class Sink(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            return len(b)

    writer = AgeWriter(Sink(), PASSPHRASE, log_n=FAST)
    tracemalloc.start()
    try:
        writer.write(data)
        writer.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 * CHUNK_SIZE, peak


def test_writer_argument_checks() -> None:
    with pytest.raises(ValueError):
        AgeWriter(io.BytesIO(), PASSPHRASE, log_n=9)
    with pytest.raises(ValueError):
        AgeWriter(io.BytesIO(), PASSPHRASE, log_n=21)
    with pytest.raises(ValueError):
        AgeWriter(io.BytesIO(), "", log_n=FAST)
    writer = AgeWriter(io.BytesIO(), PASSPHRASE, log_n=FAST)
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError):
        writer.write(b"late")


def test_writer_header_is_canonical_scrypt() -> None:
    blob = encrypt(b"x")
    lines = blob.split(b"\n")
    assert lines[0] == b"age-encryption.org/v1"
    kind, salt, log_n = lines[1].split(b" ")[1:]
    assert (kind, log_n, len(salt)) == (b"scrypt", str(FAST).encode(), 22)
    assert len(lines[2]) == 43  # 32-byte body: one short line
    assert lines[3].startswith(b"--- ")


def test_context_manager_does_not_finish_a_failed_upload() -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError):
        with AgeWriter(out, PASSPHRASE, log_n=FAST) as writer:
            writer.write(os.urandom(CHUNK_SIZE + 10))
            raise RuntimeError("upload aborted")
    # No final chunk was written, so the file cannot pass as complete.
    _, error = read_all(out.getvalue())
    assert isinstance(error, AgePayloadError)
    out = io.BytesIO()
    with AgeWriter(out, PASSPHRASE, log_n=FAST) as writer:
        writer.write(b"ok")
    assert read_all(out.getvalue()) == ([b"ok"], None)


@pytest.fixture(scope="module")
def three_chunks() -> tuple[bytes, bytes]:
    """A plaintext of two full chunks and a short one, and its encryption."""
    data = os.urandom(2 * CHUNK_SIZE + 1000)
    return data, encrypt(data)


def replace_at(blob: bytes, offset: int, new: bytes) -> bytes:
    """Return `blob` with `new` written at `offset`."""
    return blob[:offset] + new + blob[offset + len(new) :]


def flip(blob: bytes, offset: int) -> bytes:
    """Flip one bit of the byte at `offset`."""
    return replace_at(blob, offset, bytes([blob[offset] ^ 0x01]))


def other_b64_char(c: int) -> bytes:
    """A different base64 character, so the header stays syntactically valid."""
    return b"B" if c != ord("B") else b"C"


def test_tamper_header(three_chunks: tuple[bytes, bytes]) -> None:
    _, blob = three_chunks
    lines = blob.split(b"\n")
    stanza_at = len(lines[0]) + 1
    body_at = stanza_at + len(lines[1]) + 1
    mac_at = body_at + len(lines[2]) + 1 + 4

    # The version line.
    assert isinstance(read_all(flip(blob, 3))[1], AgeHeaderError)
    # The salt: a different wrap key, so the passphrase no longer opens the stanza.
    salt_at = stanza_at + len(b"-> scrypt ")
    assert isinstance(read_all(replace_at(blob, salt_at, other_b64_char(blob[salt_at])))[1], AgeNoMatchError)
    # The work factor: same.
    wf_at = stanza_at + len(lines[1]) - 2
    assert isinstance(read_all(replace_at(blob, wf_at, b"11"))[1], AgeNoMatchError)
    # The sealed file key.
    assert isinstance(read_all(replace_at(blob, body_at, other_b64_char(blob[body_at])))[1], AgeNoMatchError)
    # The MAC: the key unwraps, the MAC does not match.
    assert isinstance(read_all(replace_at(blob, mac_at, other_b64_char(blob[mac_at])))[1], AgeHMACError)
    # A stray byte: the header no longer parses.
    assert isinstance(read_all(blob[:stanza_at] + b" " + blob[stanza_at:])[1], AgeHeaderError)
    # Wrong passphrase.
    assert isinstance(read_all(blob, "wrong")[1], AgeNoMatchError)


def test_tamper_payload(three_chunks: tuple[bytes, bytes]) -> None:
    data, blob = three_chunks
    start = header_size(blob)
    sealed = CHUNK_SIZE + 16
    first, second = data[:CHUNK_SIZE], data[CHUNK_SIZE : 2 * CHUNK_SIZE]
    chunk0, chunk1 = blob[start : start + sealed], blob[start + sealed : start + 2 * sealed]
    swapped = blob[:start] + chunk1 + chunk0 + blob[start + 2 * sealed :]
    cases = {
        "nonce": (flip(blob, start - 1), []),
        "chunk 0": (flip(blob, start + 5), []),
        "chunk 1 tag": (flip(blob, start + 2 * sealed - 1), [first]),
        "final chunk": (flip(blob, len(blob) - 20), [first, second]),
        "cut mid-chunk": (blob[:-1], [first, second]),
        "cut at a chunk boundary": (blob[: start + 2 * sealed], [first, second]),
        "cut after the nonce": (blob[:start], []),
        "appended byte": (blob + b"\x00", [first, second]),
        "chunk dropped": (blob[: start + sealed] + blob[start + 2 * sealed :], [first]),
        "chunks swapped": (swapped, []),
    }
    for what, (tampered, released) in cases.items():
        chunks, error = read_all(tampered)
        assert isinstance(error, AgePayloadError), what
        assert chunks == released, what


def test_trailing_data_after_a_full_final_chunk() -> None:
    data = os.urandom(CHUNK_SIZE)
    blob = encrypt(data)
    reader = AgeReader(io.BytesIO(blob + b"junk"), PASSPHRASE)
    # The final chunk authenticates and is released (as age does); the file still fails.
    assert reader.read_chunk() == data
    assert not reader.done
    with pytest.raises(AgePayloadError, match="trailing data"):
        reader.read_chunk()
    with pytest.raises(AgePayloadError):
        reader.read_chunk()  # stays failed


def test_reader_arguments(three_chunks: tuple[bytes, bytes]) -> None:
    _, blob = three_chunks
    with pytest.raises(TypeError):
        AgeReader(io.BytesIO(blob))
    with pytest.raises(TypeError):
        AgeReader(io.BytesIO(blob), PASSPHRASE, file_key=b"k" * 16)
    # A work factor above our limit is refused before any scrypt work is done.
    with pytest.raises(AgeWorkFactorError):
        AgeReader(io.BytesIO(blob), PASSPHRASE, max_log_n=FAST - 1)
    assert b"".join(AgeReader(io.BytesIO(blob), PASSPHRASE, max_log_n=FAST)) == three_chunks[0]

"""Loading the C2SP CCTV age test vectors and running one through our reader.

Each vector file is `key: value` lines, a blank line, then the age file (maybe zlib-compressed);
see ../shared/testvectors/age/README.md.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from sluis.server.formats.age import (
    AgeArmorError,
    AgeHeaderError,
    AgeHMACError,
    AgeNoMatchError,
    AgePayloadError,
    AgeReader,
)

# A copy of the C2SP CCTV age vectors (free to copy, see its LICENSE), so the suite never depends
# on a checkout layout: ../shared/testvectors/age is where they came from.
VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "age"
NOT_VECTORS = {"README.md", "LICENSE"}
KNOWN_KEYS = {"expect", "payload", "passphrase", "identity", "file key", "armored", "compressed", "comment"}

SUCCESS = "success"
NO_MATCH = "no match"
HMAC_FAILURE = "HMAC failure"
HEADER_FAILURE = "header failure"
PAYLOAD_FAILURE = "payload failure"
ARMOR_FAILURE = "armor failure"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Vector:
    """One test vector: its metadata lines and the age file they describe."""

    name: str
    expect: str
    age_file: bytes
    payload: str | None = None
    passphrases: tuple[str, ...] = ()
    identities: tuple[str, ...] = ()
    file_key: bytes | None = None
    armored: bool = False
    comments: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Outcome:
    """What our reader did: the vector-style result and the hash of the plaintext it released."""

    result: str
    released_sha256: str
    error: str = ""


def vector_names() -> list[str]:
    """All vector file names, sorted."""
    return sorted(p.name for p in VECTOR_DIR.iterdir() if p.is_file() and p.name not in NOT_VECTORS)


def load_vector(name: str) -> Vector:
    """Parse one vector file, decompressing the age file when the header says so."""
    raw = (VECTOR_DIR / name).read_bytes()
    meta, _, body = raw.partition(b"\n\n")
    values: dict[str, list[str]] = {}
    for line in meta.decode("utf-8").splitlines():
        key, _, value = line.partition(": ")
        values.setdefault(key, []).append(value)
    unknown = set(values) - KNOWN_KEYS
    # The README says to ignore a file with a key we do not know; fail loudly instead, so a new
    # kind of vector is looked at rather than silently dropped.
    assert not unknown, f"{name}: unknown vector keys {unknown}"
    if values.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    file_key = values.get("file key")
    return Vector(
        name=name,
        expect=values["expect"][0],
        age_file=body,
        payload=values.get("payload", [None])[0],
        passphrases=tuple(values.get("passphrase", [])),
        identities=tuple(values.get("identity", [])),
        file_key=bytes.fromhex(file_key[0]) if file_key else None,
        armored=values.get("armored") == ["yes"],
        comments=tuple(values.get("comment", [])),
    )


def run_reader(
    age_file: bytes,
    passphrase: str | None = None,
    file_key: bytes | None = None,
    identities: tuple[str, ...] | None = None,
    armored: bool = False,
) -> Outcome:
    """Decrypt with our reader, hashing every chunk it releases, and classify how it ended."""
    released = hashlib.sha256()
    try:
        reader = AgeReader(
            io.BytesIO(age_file), passphrase, identities=identities, file_key=file_key, armored=armored
        )
        for chunk in reader:
            released.update(chunk)
        assert reader.done
    except AgeArmorError as exc:
        return Outcome(ARMOR_FAILURE, released.hexdigest(), repr(exc))
    except AgeHeaderError as exc:
        return Outcome(HEADER_FAILURE, released.hexdigest(), repr(exc))
    except AgeNoMatchError as exc:
        return Outcome(NO_MATCH, released.hexdigest(), repr(exc))
    except AgeHMACError as exc:
        return Outcome(HMAC_FAILURE, released.hexdigest(), repr(exc))
    except AgePayloadError as exc:
        return Outcome(PAYLOAD_FAILURE, released.hexdigest(), repr(exc))
    return Outcome(SUCCESS, released.hexdigest())


def run_with_passphrases(vector: Vector) -> Outcome:
    """Try each passphrase in turn, as age tries identities: only "no match" moves on."""
    outcome = Outcome(NO_MATCH, EMPTY_SHA256)
    for passphrase in vector.passphrases:
        outcome = run_reader(vector.age_file, passphrase=passphrase, armored=vector.armored)
        if outcome.result != NO_MATCH:
            break
    return outcome


def run_vector(vector: Vector) -> Outcome:
    """Run a vector as it asks: its passphrases, else its identities, else its file key."""
    if vector.passphrases:
        return run_with_passphrases(vector)
    if vector.identities:
        return run_reader(vector.age_file, identities=vector.identities, armored=vector.armored)
    assert vector.file_key is not None, f"{vector.name}: no passphrase, identity or file key"
    return run_reader(vector.age_file, file_key=vector.file_key, armored=vector.armored)

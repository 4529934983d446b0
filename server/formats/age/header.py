"""The age v1 header: parsing, canonical encoding, and the header MAC.

Parsing is generic — any stanza type is accepted as long as it is well formed — so that a
malformed header is rejected even when it only carries recipients we cannot unwrap. What a
stanza's arguments and body mean is left to the recipient modules (scrypt.py, x25519.py,
hybrid.py).

    age-encryption.org/v1
    -> TYPE ARG ARG...
    BASE64 BODY, WRAPPED AT 64 COLUMNS, ENDED BY A SHORT (POSSIBLY EMPTY) LINE
    --- BASE64(HMAC)
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import AgeHeaderError, AgeHMACError

# Spec ABNF: v1-line = %s"age-encryption.org/v1" LF. Any other version is not ours to read.
INTRO = b"age-encryption.org/v1\n"
# Spec ABNF: arg-line = "-> " argument *(SP argument) LF
STANZA_PREFIX = b"-> "
# Spec: "The final header line starts with `---` and is followed after a space by the
# base64-encoded MAC of the header."
MAC_PREFIX = b"---"
# Spec: "a base64-encoded body wrapped at 64 columns. The body MUST end with a line shorter
# than 64 characters, which MAY be empty."
COLUMNS_PER_LINE = 64
# Spec: HMAC key = HKDF-SHA-256(ikm = file key, salt = empty, info = "header")
HEADER_KEY_INFO = b"header"
MAC_SIZE = 32
FILE_KEY_SIZE = 16

# The spec does not bound the header, but a streaming reader must bound its memory: these
# are generous for every known recipient (a post-quantum stanza argument is ~1.5 KB).
MAX_LINE_LENGTH = 8 * 1024
MAX_HEADER_SIZE = 256 * 1024

# Unpadded standard base64. The spec forbids padding and non-canonical encodings.
_B64_CHARS = re.compile(rb"[A-Za-z0-9+/]*")


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: its type, its arguments and its decoded body."""

    type: str
    args: tuple[str, ...]
    body: bytes


@dataclass(frozen=True)
class Header:
    """A parsed header, with the exact bytes the MAC covers and the MAC itself."""

    stanzas: tuple[Stanza, ...]
    mac_input: bytes  # the header up to and including "---", without the space
    mac: bytes


def b64encode(data: bytes) -> bytes:
    """Encode as the spec wants: standard alphabet, no padding."""
    return base64.b64encode(data).rstrip(b"=")


def b64decode(text: bytes) -> bytes:
    """Decode unpadded base64, rejecting padding, stray characters and non-canonical forms."""
    if _B64_CHARS.fullmatch(text) is None or len(text) % 4 == 1:
        raise AgeHeaderError(f"invalid base64 {text[:80]!r}")
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:  # pragma: no cover - the regex already excludes this
        raise AgeHeaderError(f"invalid base64 {text[:80]!r}") from exc
    # Canonical means the unused low bits of the last character are zero: re-encoding gives
    # back the same text. Otherwise two headers with different bytes would carry the same key.
    if b64encode(data) != text:
        raise AgeHeaderError(f"non-canonical base64 {text[:80]!r}")
    return data


def _is_valid_arg(arg: bytes) -> bool:
    """Spec ABNF: argument = 1*VCHAR, i.e. one or more bytes in 0x21..0x7E."""
    return bool(arg) and all(33 <= c <= 126 for c in arg)


def _read_line(inp: BinaryIO, consumed: int) -> bytes:
    """Read one LF-terminated header line, bounded so a hostile header cannot exhaust memory."""
    if consumed > MAX_HEADER_SIZE:
        raise AgeHeaderError(f"header is longer than {MAX_HEADER_SIZE} bytes")
    line = inp.readline(MAX_LINE_LENGTH + 1)
    if not line:
        raise AgeHeaderError("unexpected end of file in header")
    if not line.endswith(b"\n"):
        if len(line) > MAX_LINE_LENGTH:
            raise AgeHeaderError(f"header line longer than {MAX_LINE_LENGTH} bytes")
        raise AgeHeaderError("unexpected end of file in header")
    return line


def _parse_stanza_line(line: bytes) -> tuple[str, tuple[str, ...]]:
    """Split '-> type arg...' into type and arguments; single spaces, no empty arguments."""
    fields = line[len(STANZA_PREFIX) : -1].split(b" ")
    if not all(_is_valid_arg(f) for f in fields):
        raise AgeHeaderError(f"malformed stanza line {line[:80]!r}")
    decoded = [f.decode("ascii") for f in fields]
    return decoded[0], tuple(decoded[1:])


def parse_header(inp: BinaryIO) -> Header:
    """Read the header from `inp`, leaving the stream positioned at the payload nonce."""
    raw = bytearray()
    line = _read_line(inp, len(raw))
    if line != INTRO:
        raise AgeHeaderError(f"not an age v1 file (intro line {line[:80]!r})")
    raw += line
    stanzas: list[Stanza] = []
    while True:
        line = _read_line(inp, len(raw))
        if line.startswith(MAC_PREFIX):
            # Spec ABNF: header = v1-line 1*stanza end — a header without a stanza is invalid.
            if not stanzas:
                raise AgeHeaderError("header has no recipient stanza")
            mac = _parse_mac_line(line)
            raw += MAC_PREFIX
            return Header(tuple(stanzas), bytes(raw), mac)
        if not line.startswith(STANZA_PREFIX):
            raise AgeHeaderError(f"expected a stanza or the MAC line, got {line[:80]!r}")
        raw += line
        stanza_type, args = _parse_stanza_line(line)
        body = bytearray()
        while True:
            line = _read_line(inp, len(raw) + len(body))
            text = line[:-1]
            if len(text) > COLUMNS_PER_LINE:
                raise AgeHeaderError(f"stanza body line longer than {COLUMNS_PER_LINE} columns")
            body += b64decode(text)
            raw += line
            # A short line (possibly empty) ends the body; a full line means more follows.
            if len(text) < COLUMNS_PER_LINE:
                break
        stanzas.append(Stanza(stanza_type, args, bytes(body)))


def _parse_mac_line(line: bytes) -> bytes:
    """Decode '--- <base64 MAC>\\n': exactly one space, a canonical 32-byte MAC, nothing else."""
    if not line.startswith(MAC_PREFIX + b" "):
        raise AgeHeaderError(f"malformed MAC line {line[:80]!r}")
    mac = b64decode(line[len(MAC_PREFIX) + 1 : -1])
    if len(mac) != MAC_SIZE:
        raise AgeHeaderError(f"header MAC is {len(mac)} bytes, expected {MAC_SIZE}")
    return mac


def encode_stanza(stanza: Stanza) -> bytes:
    """Write a stanza: '-> type args', then the body wrapped at 64 columns, short last line."""
    fields = [stanza.type, *stanza.args]
    if not all(_is_valid_arg(f.encode("ascii")) for f in fields):
        raise ValueError(f"invalid stanza type or argument in {fields!r}")
    out = bytearray(STANZA_PREFIX + " ".join(fields).encode("ascii") + b"\n")
    text = b64encode(stanza.body)
    for start in range(0, len(text), COLUMNS_PER_LINE):
        out += text[start : start + COLUMNS_PER_LINE] + b"\n"
    # The body must end with a line shorter than 64 columns, so a body that fills its last
    # line exactly (or is empty) gets an extra empty line.
    if len(text) % COLUMNS_PER_LINE == 0:
        out += b"\n"
    return bytes(out)


def header_mac(file_key: bytes, mac_input: bytes) -> bytes:
    """HMAC-SHA-256 "over the whole header up to and including the `---` mark"; binds the stanzas."""
    mac = hmac.HMAC(_header_key(file_key), hashes.SHA256())
    mac.update(mac_input)
    return mac.finalize()


def verify_header_mac(file_key: bytes, header: Header) -> None:
    """Check the header MAC in constant time, raising AgeHMACError if it is wrong."""
    mac = hmac.HMAC(_header_key(file_key), hashes.SHA256())
    mac.update(header.mac_input)
    try:
        mac.verify(header.mac)
    except InvalidSignature:
        raise AgeHMACError("header MAC is wrong: the header was modified") from None


def encode_header(file_key: bytes, stanzas: list[Stanza]) -> bytes:
    """Serialise a complete header, MAC line included."""
    mac_input = INTRO + b"".join(encode_stanza(s) for s in stanzas) + MAC_PREFIX
    return mac_input + b" " + b64encode(header_mac(file_key, mac_input)) + b"\n"


def _header_key(file_key: bytes) -> bytes:
    """Derive the header MAC key; a separate HKDF label keeps it apart from the payload key."""
    if len(file_key) != FILE_KEY_SIZE:
        raise ValueError(f"file key must be {FILE_KEY_SIZE} bytes")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=HEADER_KEY_INFO)
    return hkdf.derive(file_key)

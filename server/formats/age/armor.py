"""ASCII armor: reading `-----BEGIN AGE ENCRYPTED FILE-----` files, strictly.

Spec: "encoded according to the strict PEM encoding specified in RFC 7468, Section 3 (Figure 3),
with case-sensitive label "AGE ENCRYPTED FILE". Note that this encoding employs base64 with `=`
padding characters". "age implementations SHOULD reject non-canonical ASCII armor encodings
except for whitespace before and after the PEM block, and MAY choose to accept both LF and CRLF
line endings." We do both, and decode line by line so an armored file streams like a binary one.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import BinaryIO

from .errors import AgeArmorError

# Spec: "case-sensitive label "AGE ENCRYPTED FILE"", in RFC 7468's pre- and post-encapsulation
# boundaries "-----BEGIN " label "-----" and "-----END " label "-----".
BEGIN_LINE = b"-----BEGIN AGE ENCRYPTED FILE-----"
END_LINE = b"-----END AGE ENCRYPTED FILE-----"
# RFC 7468 Figure 3: strictbase64line = 64base64char eol, so every line but the last decodes to
# exactly 48 bytes; the last (strictbase64finl) holds 4..64 characters, padded with "=".
COLUMNS_PER_LINE = 64
BYTES_PER_LINE = COLUMNS_PER_LINE // 4 * 3
# RFC 7468, Section 3: "W = WSP / CR / LF / VTAB / FF" — the whitespace allowed around the block.
WHITESPACE = b" \t\r\n\x0b\x0c"
# The spec allows whitespace before and after the block but does not bound it; like age we
# accept at most 1 KiB on each side, so a stream of blanks cannot keep us reading.
MAX_WHITESPACE = 1024

# RFC 4648 base64 with padding; canonical form is checked by re-encoding.
_PADDED_B64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def _strip_eol(line: bytes) -> bytes:
    """Remove one LF, then one CR: LF and CRLF line endings are both accepted."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def _decode_line(line: bytes) -> bytes:
    """Decode one armor line: padded, canonical base64 of at most 64 columns, not empty."""
    if len(line) > COLUMNS_PER_LINE:
        raise AgeArmorError(f"armor line longer than {COLUMNS_PER_LINE} columns")
    if not line:
        # Figure 3 has no empty base64 line: not at the start, between lines, or before END.
        raise AgeArmorError("empty line inside the armor")
    if _PADDED_B64.fullmatch(line) is None or len(line) % 4:
        raise AgeArmorError(f"armor line is not padded base64: {line[:80]!r}")
    try:
        data = base64.b64decode(line, validate=True)
    except binascii.Error as exc:
        raise AgeArmorError(f"armor line is not padded base64: {line[:80]!r}") from exc
    # Non-canonical encodings (non-zero unused bits) would make the armor malleable.
    if base64.b64encode(data) != line:
        raise AgeArmorError(f"armor line is not canonical base64: {line[:80]!r}")
    return data


class ArmorReader(io.RawIOBase):
    """A raw stream of the bytes inside an armor; any deviation raises AgeArmorError.

    END and the trailing whitespace are checked once reached (after a short line, before its
    bytes are returned). AgeReader always reads past the final chunk, so it releases nothing
    from a file whose armor ends badly.
    """

    def __init__(self, inp: BinaryIO) -> None:
        super().__init__()
        self._inp = inp
        self._started = False
        self._finished = False
        self._pending = bytearray()  # decoded, not yet returned; appended in place, not copied
        self._failure: AgeArmorError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fill `buffer` with decoded bytes, whole armor lines at a time; 0 at the END line."""
        if self._failure is not None:
            raise self._failure
        try:
            if not self._started:
                self._read_begin()
            while len(self._pending) < len(buffer) and not self._finished:
                self._pending += self._read_data_line()
        except AgeArmorError as exc:
            self._failure = exc
            raise
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        del self._pending[:count]
        return count

    def _read_begin(self) -> None:
        """Skip whitespace-only lines, then require the exact BEGIN line."""
        skipped = 0
        while True:
            line = self._inp.readline(MAX_WHITESPACE + 1)
            if not line:
                raise AgeArmorError("no armor BEGIN line")
            if line.strip(WHITESPACE):
                break
            skipped += len(line)
            if skipped > MAX_WHITESPACE:
                raise AgeArmorError(f"more than {MAX_WHITESPACE} bytes of whitespace before the armor")
        if _strip_eol(line) != BEGIN_LINE:
            raise AgeArmorError(f"armor does not start with {BEGIN_LINE.decode()}: {line[:80]!r}")
        self._started = True

    def _read_line(self) -> bytes:
        """One line inside the armor, without its LF or CRLF; too long a line is cut and fails."""
        line = self._inp.readline(COLUMNS_PER_LINE + 3)
        if not line:
            raise AgeArmorError("armor ends without an END line")
        return _strip_eol(line)

    def _read_data_line(self) -> bytes:
        """Decode the next line; after a short (last) line, require END and the end of input."""
        line = self._read_line()
        if line == END_LINE:
            # Right after a full line, or with no data at all (an empty file, which the header
            # parser then rejects: the vectors expect a header failure, not an armor failure).
            self._finish()
            return b""
        data = _decode_line(line)
        if len(data) < BYTES_PER_LINE:
            if self._read_line() != END_LINE:
                raise AgeArmorError("a short armor line must be the last one, followed by END")
            self._finish()
        return data

    def _finish(self) -> None:
        """After END only whitespace may follow, and not much of it."""
        rest = self._inp.read(MAX_WHITESPACE + 1)
        if rest.strip(WHITESPACE):
            raise AgeArmorError("data after the armor END line")
        if len(rest) > MAX_WHITESPACE:
            raise AgeArmorError(f"more than {MAX_WHITESPACE} bytes of whitespace after the armor")
        self._finished = True


def dearmor(inp: BinaryIO) -> BinaryIO:
    """Wrap an armored input so header parser and reader see the binary age file."""
    return io.BufferedReader(ArmorReader(inp))

"""What a stored file may be called. Names come from clients, so they are checked before use."""

from __future__ import annotations

import unicodedata

from ..errors import InvalidPath

MAX_NAME_BYTES = 200          # leaves room for ".age"/".zip" under the usual 255-byte limit
STAGING_SUFFIXES = (".filepart", ".partial")   # WinSCP, and rclone's partial uploads
_FORBIDDEN = set('/\\\x7f') | {chr(c) for c in range(32)}


def check_name(name: str) -> str:
    """Return the NFC form of a single path component, or raise InvalidPath naming the problem."""
    if name in ("", ".", ".."):
        raise InvalidPath(f"{name!r} is not a file name")
    bad = sorted({c for c in name if c in _FORBIDDEN or unicodedata.category(c) in ("Cc", "Cf")})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise InvalidPath(f"file name contains characters that are not allowed: {shown}")
    name = unicodedata.normalize("NFC", name)
    if len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidPath(f"file name is longer than {MAX_NAME_BYTES} bytes")
    if name.startswith("."):
        raise InvalidPath("file names may not start with '.'")
    return name


def staged_base(name: str) -> str | None:
    """For a client's temporary upload name (X.filepart), the name it will be renamed to."""
    for suffix in STAGING_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None

"""Client paths -> components of the user's own view. Normalise first; authorise and confine after.

Everything a client can name is virtual: a component never reaches the filesystem, so the only
job here is to reject what is malformed and resolve '.' and '..' without ever leaving '/'.
"""

from __future__ import annotations

import unicodedata

from ..errors import InvalidPath

MAX_PATH_BYTES = 1024


def split_path(raw: bytes) -> tuple[str, ...]:
    """Normalise an SFTP path (absolute, or relative to '/') into validated components."""
    if len(raw) > MAX_PATH_BYTES:
        raise InvalidPath(f"path is longer than {MAX_PATH_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPath("path is not valid UTF-8") from None
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise InvalidPath("path contains NUL or control characters")
    if text.startswith("//"):
        raise InvalidPath("paths starting with '//' are refused")
    if "\\" in text:
        raise InvalidPath("'\\' is not a path separator here; use '/'")
    parts: list[str] = []
    for component in text.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            if not parts:
                raise InvalidPath("'..' would leave your folder")
            parts.pop()
            continue
        parts.append(unicodedata.normalize("NFC", component))
    return tuple(parts)


def join_path(parts: tuple[str, ...]) -> bytes:
    return ("/" + "/".join(parts)).encode()

"""Secret key files: read one safely, create one atomically with mode 0600.

One rule for the secret, audit and receipt keys: a regular file opened without following a
symlink and checked with fstat on the open descriptor (no time-of-check/time-of-use gap), mode
0600 or 0400 for a key file, and a systemd credential (`LoadCredential=`) wins over the key file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# Exactly these modes, as the operator documentation says: anything else is a mistake worth
# stopping for, including 0700 (an executable key file is a sign of a sloppy copy).
OWNER_ONLY_MODES = frozenset({0o600, 0o400})


class KeyFileError(Exception):
    """The key file or credential is unusable: wrong permissions, wrong length or not a file."""


def credential(credentials_dir: str | None, name: str) -> Path | None:
    """The systemd credential `name` if systemd passed one ($CREDENTIALS_DIRECTORY), else None."""
    if not credentials_dir:
        return None
    path = Path(credentials_dir) / name
    return path if path.exists() else None


def read_private(path: Path, *, what: str, size: int | None = None, max_size: int | None = None,
                 is_credential: bool = False, missing_hint: str = "",
                 error: type[Exception] = KeyFileError) -> bytes:
    """The bytes of the key file (or credential) `path`: exactly `size` of them, or at most
    `max_size`. `what` names the file in every error (`error`, default KeyFileError)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist" + (f" ({missing_hint})" if missing_hint else "")) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{what} {path} is a symbolic link; name the file itself") from None
        raise error(f"cannot open {what} {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if is_credential:
            # systemd guards $CREDENTIALS_DIRECTORY itself (a private mount, and an ACL for the
            # service user that shows up as group bits), so only world access is a red flag.
            if mode & 0o007:
                raise error(f"credential {path} has mode {mode:04o}: readable by others")
        elif mode not in OWNER_ONLY_MODES:
            raise error(f"{what} {path} has mode {mode:04o}; it must be 0600 or 0400 "
                        f"(readable by its owner only): run `chmod 600 {path}`")
        if size is not None and info.st_size != size:
            raise error(f"{what} {path} holds {info.st_size} bytes; it must be exactly {size} "
                        "raw bytes (not hex or base64, and no trailing newline)")
        limit = size if size is not None else max_size
        if limit is not None and info.st_size > limit:
            raise error(f"{what} {path} holds {info.st_size} bytes; a key is at most {limit}")
        data = os.read(fd, (limit if limit is not None else info.st_size) + 1)
    finally:
        os.close(fd)
    if (size is not None and len(data) != size) or (limit is not None and len(data) > limit):
        raise error(f"{what} {path} changed while being read")
    return data


def create_private(path: Path, data: bytes, *, what: str, keep_because: str = "", hint: str = "",
                   error: type[Exception] = KeyFileError) -> None:
    """Write `data` to a new file `path` with mode 0600 from its first byte, fsynced.

    Never replaces anything: an existing file (or symlink) raises FileExistsError saying why it
    must be kept (`keep_because`); any other failure raises `error` with `hint` on what to do."""
    path = Path(path)
    # O_EXCL makes creation atomic and refuses to follow or replace anything already there, and
    # passing 0o600 to open() means the file is never, even briefly, readable by others.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise FileExistsError(f"refusing to overwrite {what} {path}"
                              + (f": {keep_because}" if keep_because else "")) from None
    except OSError as exc:
        raise error(f"cannot create {what} {path}: {exc.strerror}" + (f"; {hint}" if hint else "")) from exc
    try:
        # The umask may have removed bits from 0o600 but never adds any; set it exactly anyway.
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)

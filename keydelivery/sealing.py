"""Sealing passphrases at rest (NaCl SecretBox) so a copied database alone reveals nothing.

The key is 32 raw random bytes, either in a key file that only the service user may read, or in
a systemd credential (`LoadCredential=` / `LoadCredentialEncrypted=`) named `sluis-secret-key`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nacl.exceptions
import nacl.secret
import nacl.utils

KEY_SIZE = nacl.secret.SecretBox.KEY_SIZE
CREDENTIAL_NAME = "sluis-secret-key"
# Exactly these modes, as the operator documentation says: anything else is a mistake worth
# stopping for, including 0700 (an executable key file is a sign of a sloppy copy).
_ALLOWED_KEY_FILE_MODES = frozenset({0o600, 0o400})


class SealError(Exception):
    """A sealed value could not be opened: it was altered, truncated or sealed with another key."""


class KeyFileError(Exception):
    """The key file or credential is unusable: wrong permissions, wrong length or not a file."""


class Sealer:
    """Seal and open small secrets with one symmetric key (XSalsa20-Poly1305, random nonce)."""

    def __init__(self, key: bytes) -> None:
        """Wrap a 32-byte key; use `from_file` or `load_sealer` rather than raw keys in code."""
        if len(key) != KEY_SIZE:
            raise KeyFileError(f"secret key must be {KEY_SIZE} bytes, got {len(key)}")
        self._box = nacl.secret.SecretBox(key)

    def __repr__(self) -> str:
        # Never let the key end up in a log line or traceback.
        return "Sealer(<key hidden>)"

    @classmethod
    def from_file(cls, path: Path) -> Sealer:
        """Load the key from `path`, refusing files others could read or of the wrong length."""
        return cls(_read_key(Path(path), strict_mode=True))

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt and authenticate `plaintext`; the random nonce is stored in front of it."""
        return bytes(self._box.encrypt(plaintext))

    def open(self, sealed: bytes) -> bytes:
        """Decrypt `sealed`, raising `SealError` if it was tampered with or uses another key."""
        try:
            return self._box.decrypt(sealed)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise SealError(
                "sealed value failed authentication: tampered with, truncated, "
                "or sealed with a different key"
            ) from exc


def create_key_file(path: Path) -> None:
    """Write a fresh random key to `path` with mode 0600, never overwriting an existing file."""
    path = Path(path)
    key = nacl.utils.random(KEY_SIZE)
    # O_EXCL makes creation atomic and refuses to follow or replace anything already there, and
    # passing 0o600 to open() means the key is never, even briefly, readable by others.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise FileExistsError(
            f"refusing to overwrite existing key file {path}: every passphrase sealed with it "
            "would become unreadable; move it away first if you really mean to replace it"
        ) from None
    try:
        # The umask may have removed bits from 0o600 but never adds any; set it exactly anyway.
        os.fchmod(fd, 0o600)
        view = memoryview(key)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def load_sealer(key_file: Path, credentials_dir: str | None) -> Sealer:
    """Prefer the systemd credential `sluis-secret-key` when present, else the key file."""
    if credentials_dir:
        credential = Path(credentials_dir) / CREDENTIAL_NAME
        if credential.exists():
            # systemd enforces access to $CREDENTIALS_DIRECTORY itself (private mount, and an
            # ACL for the service user, which shows up as group bits), so only world access is
            # a red flag here.
            return Sealer(_read_key(credential, strict_mode=False))
    return Sealer.from_file(Path(key_file))


def _read_key(path: Path, *, strict_mode: bool) -> bytes:
    """Read exactly KEY_SIZE bytes from `path` after checking what kind of file it is."""
    try:
        # O_NOFOLLOW: checking a symlink's target mode and then reading another file would be a
        # time-of-check/time-of-use gap; fstat on the opened descriptor closes it.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {path} does not exist (create it with create_key_file() or "
            f"provide the systemd credential {CREDENTIAL_NAME})"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if strict_mode and mode not in _ALLOWED_KEY_FILE_MODES:
            raise KeyFileError(
                f"key file {path} has mode {mode:04o}; it must be 0600 or 0400 "
                f"(readable by its owner only): run `chmod 600 {path}`"
            )
        if not strict_mode and mode & 0o007:
            raise KeyFileError(f"credential {path} has mode {mode:04o}: readable by others")
        if info.st_size != KEY_SIZE:
            raise KeyFileError(
                f"key file {path} holds {info.st_size} bytes; a key is exactly {KEY_SIZE} "
                "raw bytes (not hex or base64, and no trailing newline)"
            )
        key = os.read(fd, KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_SIZE:
        raise KeyFileError(f"key file {path} changed while being read")
    return key

"""Sealing passphrases at rest (NaCl SecretBox) so a copied database alone reveals nothing.

The key is 32 raw random bytes, either in a key file that only the service user may read, or in
a systemd credential (`LoadCredential=` / `LoadCredentialEncrypted=`) named `sluis-secret-key`.
"""

from __future__ import annotations

from pathlib import Path

import nacl.exceptions
import nacl.secret
import nacl.utils

from ..server.core import keyfiles
from ..server.core.keyfiles import KeyFileError

KEY_SIZE = nacl.secret.SecretBox.KEY_SIZE
CREDENTIAL_NAME = "sluis-secret-key"


class SealError(Exception):
    """A sealed value could not be opened: it was altered, truncated or sealed with another key."""


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
        return cls(_read_key(Path(path)))

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
    keyfiles.create_private(
        path, nacl.utils.random(KEY_SIZE), what="key file",
        keep_because="every passphrase sealed with it would become unreadable; "
                     "move it away first if you really mean to replace it")


def load_sealer(key_file: Path, credentials_dir: str | None) -> Sealer:
    """Prefer the systemd credential `sluis-secret-key` when present, else the key file."""
    credential = keyfiles.credential(credentials_dir, CREDENTIAL_NAME)
    if credential is not None:
        return Sealer(_read_key(credential, is_credential=True))
    return Sealer.from_file(Path(key_file))


def _read_key(path: Path, *, is_credential: bool = False) -> bytes:
    """Exactly KEY_SIZE bytes from the key file or credential `path` (keyfiles' rules)."""
    return keyfiles.read_private(
        path, what="credential" if is_credential else "key file", size=KEY_SIZE,
        is_credential=is_credential,
        missing_hint=f"create it with create_key_file() or provide the systemd credential {CREDENTIAL_NAME}")

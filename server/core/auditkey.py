"""The audit key: 32 random bytes beside the secret key, never in the database.

It keys the chain (each record's hash is HMAC-SHA256 under it) and, through a one-way
derivation, the Ed25519 key that signs checkpoints of the head. Whoever can write the database
but not read this key cannot rebuild the chain; auditors need only the public key.
The systemd credential `sluis-audit-key` wins over the key file, as for the secret key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import nacl.exceptions
import nacl.signing

from . import keyfiles
from .keyfiles import KeyFileError

KEY_SIZE = 32
CREDENTIAL_NAME = "sluis-audit-key"
SIGNING_LABEL = b"sluis audit checkpoint signing key v1"
PUBLIC_PREFIX = "ed25519:"


class AuditKey:
    """HMAC for the chain and Ed25519 signatures for checkpoints, from one 32-byte key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise KeyFileError(f"audit key must be {KEY_SIZE} bytes, got {len(key)}")
        self._key = key
        seed = hmac.new(key, SIGNING_LABEL, hashlib.sha256).digest()
        self._signing = nacl.signing.SigningKey(seed)
        self.public = PublicKey(bytes(self._signing.verify_key))

    def __repr__(self) -> str:
        return f"AuditKey(<key hidden>, public={self.public.text})"

    def mac(self, payload: bytes) -> str:
        """HMAC-SHA256 of `payload`, lower-case hex."""
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message).signature


class PublicKey:
    """The checkpoint verification key: `ed25519:<base64 of 32 bytes>`, short id = SHA-256[:16 hex]."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.text = PUBLIC_PREFIX + base64.b64encode(raw).decode()
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]
        self._verify = nacl.signing.VerifyKey(raw)

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """Read the form `sluis audit public-key` prints; ValueError names the problem."""
        text = text.strip()
        if not text.startswith(PUBLIC_PREFIX):
            raise ValueError(f"public key {text[:40]!r}: expected '{PUBLIC_PREFIX}<base64>'")
        try:
            raw = base64.b64decode(text[len(PUBLIC_PREFIX):], validate=True)
        except ValueError:
            raise ValueError("public key: not valid base64") from None
        if len(raw) != 32:
            raise ValueError(f"public key: expected 32 bytes, got {len(raw)}")
        return cls(raw)

    def verifies(self, message: bytes, signature: bytes) -> bool:
        try:
            self._verify.verify(message, signature)
            return True
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False


def load_audit_key(key_file: Path, credentials_dir: str | None) -> AuditKey | None:
    """The credential if passed, else the key file; None when neither exists (an old setup)."""
    credential = keyfiles.credential(credentials_dir, CREDENTIAL_NAME)
    if credential is not None:
        return AuditKey(_read(credential, is_credential=True))
    if not os.path.lexists(key_file):
        return None
    return AuditKey(_read(Path(key_file)))


def create_audit_key(key_file: Path) -> AuditKey:
    """Create the key file (0600, O_EXCL); if another process just made it, use that one."""
    try:
        keyfiles.create_private(Path(key_file), os.urandom(KEY_SIZE), what="audit key",
                                hint="run the command once as a user who may write there, "
                                     "or set [crypto] audit_key_file")
    except FileExistsError:
        pass
    return AuditKey(_read(Path(key_file)))


def _read(path: Path, *, is_credential: bool = False) -> bytes:
    """Exactly KEY_SIZE bytes from the key file or credential `path` (keyfiles' rules)."""
    return keyfiles.read_private(path, what="credential" if is_credential else "audit key",
                                 size=KEY_SIZE, is_credential=is_credential)

"""The receipt signing key: an ed25519 key in OpenSSH format (`receipt.key`, 0600, beside the
secret key), or the systemd credential `sluis-receipt-key`. Several nodes share it like the host key.

An existing setup has no receipt key; the first start after the upgrade creates one (atomically,
O_EXCL, 0600) and the caller records it in the audit log with its fingerprint (docs/receipts.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..formats import sshsig
from . import keyfiles

CREDENTIAL_NAME = "sluis-receipt-key"
KEY_FILE_NAME = "receipt.key"
MAX_KEY_FILE = 16 * 1024


class ReceiptKeyError(Exception):
    """The receipt key cannot be read or created: the message says what to do."""


@dataclass(frozen=True)
class LoadedKey:
    key: Ed25519PrivateKey
    origin: str        # the file or credential it came from
    created: bool      # made just now (an upgraded setup's first start)

    @property
    def fingerprint(self) -> str:
        return sshsig.fingerprint(self.key.public_key())


def key_path(secret_key_file: Path) -> Path:
    """Where the receipt key lives: beside the secret key."""
    return Path(secret_key_file).parent / KEY_FILE_NAME


def private_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def create_key_file(path: Path) -> Ed25519PrivateKey:
    """Write a fresh ed25519 key with mode 0600 from the start; never overwrites anything."""
    key = Ed25519PrivateKey.generate()
    keyfiles.create_private(path, private_bytes(key), what="receipt key", error=ReceiptKeyError,
                            keep_because="receipts signed with it could no longer be verified "
                                         "against a new key",
                            hint="run `sluis receipt keygen` as a user who may write there, or pass "
                                 f"the systemd credential {CREDENTIAL_NAME}")
    pub = public_path(path)
    pub.unlink(missing_ok=True)
    pub.write_text(sshsig.public_line(key.public_key()) + " sluis receipt key\n")
    pub.chmod(0o644)  # public: operators running as the service user print allowed_signers from it
    return key


def public_path(path: Path) -> Path:
    return Path(str(path) + ".pub")


def public_line(secret_key_file: Path, credentials_dir: str | None) -> str:
    """The receipt key's public line: from the private key if readable, else from receipt.key.pub
    (an operator running as the service user may not read a root-owned key)."""
    try:
        return sshsig.public_line(load_or_create(secret_key_file, credentials_dir, create=False).key.public_key())
    except ReceiptKeyError:
        pub = public_path(key_path(secret_key_file))
        try:
            return sshsig.public_line(sshsig.parse_public_line(pub.read_text()))
        except (OSError, sshsig.SignatureError):
            raise ReceiptKeyError(f"cannot read the receipt key {key_path(secret_key_file)} nor {pub}") from None


def load_key(path: Path, *, is_credential: bool = False) -> Ed25519PrivateKey:
    """The ed25519 key in the key file or credential `path` (keyfiles' rules)."""
    data = keyfiles.read_private(path, what="credential" if is_credential else "receipt key",
                                 max_size=MAX_KEY_FILE, is_credential=is_credential, error=ReceiptKeyError)
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ReceiptKeyError(f"receipt key {path} is not an unencrypted OpenSSH private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ReceiptKeyError(f"receipt key {path} is not an ed25519 key")
    return key


def load_or_create(secret_key_file: Path, credentials_dir: str | None, *, create: bool = True) -> LoadedKey:
    """The credential if systemd passes one, else the key file, created if missing (upgrade)."""
    credential = keyfiles.credential(credentials_dir, CREDENTIAL_NAME)
    if credential is not None:
        return LoadedKey(load_key(credential, is_credential=True), str(credential), False)
    path = key_path(secret_key_file)
    try:
        return LoadedKey(load_key(path), str(path), False)
    except ReceiptKeyError:
        if path.exists() or path.is_symlink() or not create:
            raise
    try:
        return LoadedKey(create_key_file(path), str(path), True)
    except FileExistsError:  # another process made it between our look and our create
        return LoadedKey(load_key(path), str(path), False)

"""The X25519 recipient stanza: ``-> X25519 <ephemeral share>``.

    shared secret = X25519(ephemeral secret, recipient)
    wrap key      = HKDF-SHA-256(ikm = shared secret, salt = ephemeral share || recipient,
                                 info = "age-encryption.org/v1/X25519")
    body          = ChaCha20-Poly1305(wrap key, nonce = 0, file key)

Identities are `AGE-SECRET-KEY-1...` and recipients `age1...` (Bech32, see bech32.py).
"""

from __future__ import annotations

import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from . import bech32
from .errors import AgeHeaderError
from .header import Stanza, b64encode
from .stanzas import checked_argument, first_opening

# Spec: "The first is the fixed string `X25519`". Types are case-sensitive: `x25519` is not ours.
STANZA_TYPE = "X25519"
# Spec: info = "age-encryption.org/v1/X25519"
STANZA_LABEL = b"age-encryption.org/v1/X25519"
# Spec: "encoded as Bech32 with HRP `AGE-SECRET-KEY-`" / "with HRP `age`".
IDENTITY_HRP = "AGE-SECRET-KEY-"
RECIPIENT_HRP = "age"
# RFC 7748: scalars and u-coordinates are 32 bytes.
KEY_SIZE = 32
WRAP_KEY_SIZE = 32
# Spec: "the ChaCha20-Poly1305 nonce is fixed as 12 0x00 bytes" — each wrap key is used once,
# because every stanza has a fresh ephemeral secret.
WRAP_NONCE = b"\x00" * 12
_ALL_ZERO = b"\x00" * KEY_SIZE


def raw_public(key: X25519PrivateKey) -> bytes:
    """The 32-byte u-coordinate of `key`'s public point."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def shared_secret(private: X25519PrivateKey, public: bytes, what: str = "X25519 share") -> bytes:
    """X25519, refusing the all-zero result a low-order or identity point gives (`what` names
    the public value in the error).

    Spec: "If the shared secret is all 0x00 bytes, the identity implementation MUST abort."
    """
    try:
        secret = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # OpenSSL refuses the all-zero output itself
        secret = _ALL_ZERO
    if hmac.compare_digest(secret, _ALL_ZERO):
        raise AgeHeaderError(f"{what} gives the all-zero shared secret (low-order point)")
    return secret


def wrap_key(secret: bytes, share: bytes, recipient: bytes) -> bytes:
    """Derive the key that seals the file key; the salt binds both public values."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=WRAP_KEY_SIZE, salt=share + recipient, info=STANZA_LABEL)
    return hkdf.derive(secret)


class X25519Recipient:
    """An `age1...` public key: wraps a file key to its holder."""

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != KEY_SIZE:
            raise ValueError(f"an X25519 recipient is {KEY_SIZE} bytes, not {len(public_key)}")
        self.public_key = public_key

    @classmethod
    def parse(cls, text: str) -> X25519Recipient:
        """Parse `age1...`; raise ValueError if it is not a well-formed X25519 recipient."""
        hrp, data = bech32.decode(text)
        if hrp != RECIPIENT_HRP:
            raise ValueError(f"not an X25519 recipient (HRP {hrp!r})")
        return cls(data)

    def __str__(self) -> str:
        return bech32.encode(RECIPIENT_HRP, self.public_key)

    def wrap(self, file_key: bytes) -> Stanza:
        """Seal `file_key` with a fresh ephemeral secret. Spec: "A new ephemeral secret MUST be
        generated for each stanza and each file." """
        ephemeral = X25519PrivateKey.generate()
        share = raw_public(ephemeral)
        try:
            secret = shared_secret(ephemeral, self.public_key)
        except AgeHeaderError:
            raise ValueError("the recipient is a low-order point, not a public key") from None
        key = wrap_key(secret, share, self.public_key)
        body = ChaCha20Poly1305(key).encrypt(WRAP_NONCE, file_key, None)
        return Stanza(STANZA_TYPE, (b64encode(share).decode("ascii"),), body)


class X25519Identity:
    """An `AGE-SECRET-KEY-1...` secret key: unwraps X25519 stanzas addressed to it."""

    def __init__(self, secret_key: bytes) -> None:
        if len(secret_key) != KEY_SIZE:
            raise ValueError(f"an X25519 identity is {KEY_SIZE} bytes, not {len(secret_key)}")
        self._key = X25519PrivateKey.from_private_bytes(secret_key)
        self._secret_key = secret_key
        self.recipient = X25519Recipient(raw_public(self._key))

    @classmethod
    def generate(cls) -> X25519Identity:
        """Spec: identity = read(CSPRNG, 32)."""
        return cls(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def parse(cls, text: str) -> X25519Identity:
        """Parse `AGE-SECRET-KEY-1...`; raise ValueError if it is not one."""
        hrp, data = bech32.decode(text)
        if hrp != IDENTITY_HRP.lower():
            raise ValueError("not an X25519 identity")
        return cls(data)

    def __str__(self) -> str:
        return bech32.encode(IDENTITY_HRP, self._secret_key).upper()

    def __repr__(self) -> str:  # never print the secret
        return f"X25519Identity({self.recipient})"

    def unwrap(self, stanzas: tuple[Stanza, ...]) -> bytes | None:
        """Return the file key from the first X25519 stanza that opens, or None.

        Spec: "MUST ignore any stanza that does not have `X25519` as the first argument"."""
        return first_opening(stanzas, STANZA_TYPE, self._unwrap_one)

    def _unwrap_one(self, stanza: Stanza) -> bytes | None:
        """Check the stanza strictly (a malformed one fails the file), then try to open it."""
        # Spec: "MUST otherwise reject any stanza that has more or less than two arguments [the
        # type and the share], or where the second argument is not a canonical base64 encoding
        # of a 32-byte value", and the body must be exactly 32 bytes (see stanzas.py).
        share = checked_argument(stanza, KEY_SIZE)
        key = wrap_key(shared_secret(self._key, share), share, self.recipient.public_key)
        try:
            return ChaCha20Poly1305(key).decrypt(WRAP_NONCE, stanza.body, None)
        except InvalidTag:
            return None  # addressed to someone else: not an error, try the next stanza

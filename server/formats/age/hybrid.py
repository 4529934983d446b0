"""The post-quantum recipient stanza: ``-> mlkem768x25519 <enc>``.

    enc, body = HPKE SealBase(KEM = MLKEM768-X25519, KDF = HKDF-SHA256, AEAD = ChaCha20Poly1305,
                              pkR = recipient, info = "age-encryption.org/mlkem768x25519",
                              aad = "", plaintext = file key)

Identities are `AGE-SECRET-KEY-PQ-1...` (a 32-byte seed) and recipients `age1pq1...` (1216 bytes).
The KEM is in xwing.py, HPKE in hpke.py.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag

from . import bech32, hpke, xwing
from .header import Stanza, b64encode
from .stanzas import checked_argument, first_opening

# Spec: "the first is the fixed string `mlkem768x25519`"; `MLKEM768X25519` is some other type.
STANZA_TYPE = "mlkem768x25519"
# Spec: info = "age-encryption.org/mlkem768x25519"
HPKE_INFO = b"age-encryption.org/mlkem768x25519"
# Spec: "encoded as Bech32 with HRP `AGE-SECRET-KEY-PQ-`" / "with HRP `age1pq`".
IDENTITY_HRP = "AGE-SECRET-KEY-PQ-"
RECIPIENT_HRP = "age1pq"
AVAILABLE = xwing.AVAILABLE


class HybridRecipient:
    """An `age1pq1...` public key: ML-KEM-768 and X25519, so quantum-resistant."""

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != xwing.PUBLIC_KEY_SIZE:
            raise ValueError(f"an age1pq recipient is {xwing.PUBLIC_KEY_SIZE} bytes, not {len(public_key)}")
        self.public_key = public_key

    @classmethod
    def parse(cls, text: str) -> HybridRecipient:
        """Parse `age1pq1...`; raise ValueError if it is not one."""
        hrp, data = bech32.decode(text)
        if hrp != RECIPIENT_HRP:
            raise ValueError(f"not an age1pq recipient (HRP {hrp!r})")
        return cls(data)

    def __str__(self) -> str:
        return bech32.encode(RECIPIENT_HRP, self.public_key)

    def wrap(self, file_key: bytes) -> Stanza:
        """Seal `file_key` to this recipient with a fresh encapsulation."""
        secret, enc = xwing.encapsulate(self.public_key)
        body = hpke.seal(xwing.KEM_ID, secret, HPKE_INFO, file_key)
        return Stanza(STANZA_TYPE, (b64encode(enc).decode("ascii"),), body)


class HybridIdentity:
    """An `AGE-SECRET-KEY-PQ-1...` secret key: unwraps mlkem768x25519 stanzas."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._key = xwing.PrivateKey(seed)
        self.recipient = HybridRecipient(self._key.public_key)

    @classmethod
    def generate(cls) -> HybridIdentity:
        """Spec: identity = read(CSPRNG, 32)."""
        return cls(os.urandom(xwing.SEED_SIZE))

    @classmethod
    def parse(cls, text: str) -> HybridIdentity:
        """Parse `AGE-SECRET-KEY-PQ-1...`; raise ValueError if it is not one."""
        hrp, data = bech32.decode(text)
        if hrp != IDENTITY_HRP.lower():
            raise ValueError("not an AGE-SECRET-KEY-PQ- identity")
        return cls(data)

    def __str__(self) -> str:
        return bech32.encode(IDENTITY_HRP, self._seed).upper()

    def __repr__(self) -> str:  # never print the secret
        return f"HybridIdentity({str(self.recipient)[:24]}...)"

    def unwrap(self, stanzas: tuple[Stanza, ...]) -> bytes | None:
        """Return the file key from the first mlkem768x25519 stanza that opens, or None.

        Spec: "MUST ignore any stanza that does not have `mlkem768x25519` as the first argument"."""
        return first_opening(stanzas, STANZA_TYPE, self._unwrap_one)

    def _unwrap_one(self, stanza: Stanza) -> bytes | None:
        """Check the stanza strictly (a malformed one fails the file), then try to open it."""
        # Spec: "MUST otherwise reject any stanza that has more or less than two arguments, or
        # where the second argument is not a canonical base64 encoding of a 1120-byte value",
        # and the body must be exactly 32 bytes (see stanzas.py).
        enc = checked_argument(stanza, xwing.ENC_SIZE)
        secret = self._key.decapsulate(enc)
        try:
            return hpke.open_(xwing.KEM_ID, secret, HPKE_INFO, stanza.body)
        except InvalidTag:
            return None  # another recipient's stanza, or a corrupted ML-KEM ciphertext

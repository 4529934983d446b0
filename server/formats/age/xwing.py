"""The MLKEM768-X25519 hybrid KEM (X-Wing), as age's post-quantum recipient uses it.

Reference: filippo.io/hpke-pq (draft-ietf-hpke-pq-03). A private key is a 32-byte seed:

    seed_full = SHAKE256(seed, 96); ML-KEM-768 keys from seed_full[:64], X25519 key = seed_full[64:]
    public key = ML-KEM encapsulation key (1184) || X25519 public key (32)
    enc        = ML-KEM ciphertext (1088) || X25519 ephemeral share (32)
    ss         = SHA3-256(ss_PQ || ss_T || ct_T || ek_T || "\\.//^\\")

ML-KEM-768 itself comes from `cryptography` (OpenSSL 3.5+); AVAILABLE says whether it works here.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .errors import AgeHeaderError
from .x25519 import raw_public, shared_secret

try:
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey

    MLKEM768PrivateKey.generate()
    AVAILABLE = True
except Exception:  # ImportError on cryptography < 47, UnsupportedAlgorithm on older OpenSSL
    AVAILABLE = False

# hpke-pq: "KEM identifier 0x647a" for MLKEM768-X25519.
KEM_ID = 0x647A
# hpke-pq: "The MLKEM768-X25519 Label is alternatively encoded as 5c2e2f2f5e5c".
LABEL = b"\\.//^\\"
SEED_SIZE = 32  # Nsk
MLKEM_SEED_SIZE = 64  # KEM.Nseed (d || z, FIPS 203)
X25519_SEED_SIZE = 32  # Group.Nseed
MLKEM_PUBLIC_SIZE = 1184  # KEM.Nek
MLKEM_CIPHERTEXT_SIZE = 1088  # KEM.Nct
X25519_SIZE = 32  # Group.Nelem
PUBLIC_KEY_SIZE = MLKEM_PUBLIC_SIZE + X25519_SIZE  # Npk = 1216
ENC_SIZE = MLKEM_CIPHERTEXT_SIZE + X25519_SIZE  # Nenc = 1120


def _require() -> None:
    """Fail clearly where ML-KEM-768 is missing, rather than deep inside a decryption."""
    if not AVAILABLE:
        raise RuntimeError("ML-KEM-768 needs cryptography >= 47 on OpenSSL >= 3.5")


def _combine(ss_pq: bytes, ss_t: bytes, ct_t: bytes, ek_t: bytes) -> bytes:
    """hpke-pq: ss = SHA3-256(ss_PQ || ss_T || ct_T || ek_T || Label)."""
    return hashlib.sha3_256(ss_pq + ss_t + ct_t + ek_t + LABEL).digest()


class PrivateKey:
    """An expanded X-Wing private key; only the 32-byte seed is ever stored."""

    def __init__(self, seed: bytes) -> None:
        _require()
        if len(seed) != SEED_SIZE:
            raise ValueError(f"an MLKEM768-X25519 seed is {SEED_SIZE} bytes, not {len(seed)}")
        # hpke-pq expandKey: seed_full = SHAKE256(seed, KEM.Nseed + Group.Nseed).
        seed_full = hashlib.shake_256(seed).digest(MLKEM_SEED_SIZE + X25519_SEED_SIZE)
        self._mlkem = MLKEM768PrivateKey.from_seed_bytes(seed_full[:MLKEM_SEED_SIZE])
        # Curve25519: "Group.RandomScalar ... [is] the identity".
        self._x25519 = X25519PrivateKey.from_private_bytes(seed_full[MLKEM_SEED_SIZE:])
        self._ek_t = raw_public(self._x25519)
        self.public_key = self._mlkem.public_key().public_bytes_raw() + self._ek_t

    def decapsulate(self, enc: bytes) -> bytes:
        """hpke-pq Decaps. A wrong ML-KEM ciphertext gives a wrong secret (implicit rejection)."""
        if len(enc) != ENC_SIZE:
            raise ValueError(f"enc is {len(enc)} bytes, expected {ENC_SIZE}")
        ct_pq, ct_t = enc[:MLKEM_CIPHERTEXT_SIZE], enc[MLKEM_CIPHERTEXT_SIZE:]
        ss_pq = self._mlkem.decapsulate(ct_pq)
        # age refuses an all-zero X25519 secret here too: the vectors expect a header failure.
        ss_t = shared_secret(self._x25519, ct_t, "X25519 part of enc")
        return _combine(ss_pq, ss_t, ct_t, self._ek_t)


def encapsulate(public_key: bytes) -> tuple[bytes, bytes]:
    """hpke-pq Encaps: return (shared secret, enc) for a 1216-byte public key."""
    _require()
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an MLKEM768-X25519 public key is {PUBLIC_KEY_SIZE} bytes")
    ek_pq, ek_t = public_key[:MLKEM_PUBLIC_SIZE], public_key[MLKEM_PUBLIC_SIZE:]
    ss_pq, ct_pq = MLKEM768PublicKey.from_public_bytes(ek_pq).encapsulate()
    ephemeral = X25519PrivateKey.generate()
    ct_t = raw_public(ephemeral)
    try:
        ss_t = shared_secret(ephemeral, ek_t)
    except AgeHeaderError:
        raise ValueError("the recipient's X25519 key is a low-order point") from None
    return _combine(ss_pq, ss_t, ct_t, ek_t), ct_pq + ct_t

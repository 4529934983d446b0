"""HPKE (RFC 9180) base mode, single-shot Seal/Open, with HKDF-SHA256 and ChaCha20Poly1305.

Only what age's mlkem768x25519 stanza needs: one message per context (sequence number 0, so
the nonce is the base nonce), no PSK, no exporter. The KEM is the caller's (see xwing.py);
here it only contributes its shared secret and its identifier to the suite ID.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

# RFC 9180, Section 7.2: KDF_ID 0x0001 = HKDF-SHA256; Section 7.3: AEAD_ID 0x0003 = ChaCha20Poly1305.
KDF_ID = 0x0001
AEAD_ID = 0x0003
# RFC 9180, Section 5: mode_base = 0x00.
MODE_BASE = b"\x00"
# RFC 9180, Section 4: labels are prefixed with "HPKE-v1".
VERSION_LABEL = b"HPKE-v1"
# RFC 9180, Section 7.3: ChaCha20Poly1305 has Nk = 32, Nn = 12.
KEY_SIZE = 32
NONCE_SIZE = 12


def _suite_id(kem_id: int) -> bytes:
    """RFC 9180, Section 5.1: suite_id = concat("HPKE", I2OSP(kem_id, 2), I2OSP(kdf_id, 2), I2OSP(aead_id, 2))."""
    return b"HPKE" + kem_id.to_bytes(2, "big") + KDF_ID.to_bytes(2, "big") + AEAD_ID.to_bytes(2, "big")


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    """RFC 9180, Section 4: Extract(salt, concat("HPKE-v1", suite_id, label, ikm))."""
    # HKDF-Extract is HMAC with the salt as key; an empty salt is the same as HashLen zeros.
    return hmac.new(salt, VERSION_LABEL + suite_id + label + ikm, hashlib.sha256).digest()


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    """RFC 9180, Section 4: Expand(prk, concat(I2OSP(L, 2), "HPKE-v1", suite_id, label, info), L)."""
    full_info = length.to_bytes(2, "big") + VERSION_LABEL + suite_id + label + info
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=full_info).derive(prk)


def _key_schedule(kem_id: int, shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    """RFC 9180, Section 5.1 KeySchedule for mode_base (psk and psk_id empty): (key, base_nonce)."""
    suite_id = _suite_id(kem_id)
    psk_id_hash = _labeled_extract(suite_id, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(suite_id, b"", b"info_hash", info)
    context = MODE_BASE + psk_id_hash + info_hash
    secret = _labeled_extract(suite_id, shared_secret, b"secret", b"")
    key = _labeled_expand(suite_id, secret, b"key", context, KEY_SIZE)
    base_nonce = _labeled_expand(suite_id, secret, b"base_nonce", context, NONCE_SIZE)
    return key, base_nonce


def seal(kem_id: int, shared_secret: bytes, info: bytes, plaintext: bytes) -> bytes:
    """The first (and only) Seal of a SealBase context, with empty aad."""
    key, nonce = _key_schedule(kem_id, shared_secret, info)
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, b"")


def open_(kem_id: int, shared_secret: bytes, info: bytes, ciphertext: bytes) -> bytes:
    """The first Open of an OpenBase context; raises cryptography's InvalidTag if it fails."""
    key, nonce = _key_schedule(kem_id, shared_secret, info)
    return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, b"")

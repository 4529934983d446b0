"""The scrypt (passphrase) recipient stanza: ``-> scrypt <salt> <log_n>``.

    wrap key = scrypt(passphrase, salt = LABEL || salt, N = 2**log_n, r = 8, p = 1)
    body     = ChaCha20-Poly1305(wrap key, nonce = 0, file key)

Only unwrapping is recipient-specific; the header around the stanza is parsed in header.py.
"""

from __future__ import annotations

import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import AgeHeaderError, AgeNoMatchError, AgeWorkFactorError
from .header import FILE_KEY_SIZE, Stanza, b64decode, b64encode

STANZA_TYPE = "scrypt"
# Spec: S = "age-encryption.org/v1/scrypt" || salt — the label separates age's scrypt use
# from any other use of the same passphrase.
STANZA_LABEL = b"age-encryption.org/v1/scrypt"
SALT_SIZE = 16
SCRYPT_R = 8
SCRYPT_P = 1
WRAP_KEY_SIZE = 32
# Spec: "the ChaCha20-Poly1305 nonce is fixed as 12 0x00 bytes" — safe because each wrap key
# comes from a fresh salt and seals exactly one message.
WRAP_NONCE = b"\x00" * 12
TAG_SIZE = 16
BODY_SIZE = FILE_KEY_SIZE + TAG_SIZE

# Our passphrases are random with >= 100 bits of entropy (112.8), so the KDF does not carry the
# security: guessing costs 2**112 trials at any work factor. 2**10 costs 128 * r * N = 1 MiB and
# about 2 ms per file; 2**15 cost 32 MiB and 0.08 s of every upload (docs/age.md, "Work factor").
DEFAULT_LOG_N = 10
MIN_WRITE_LOG_N = 10
MAX_WRITE_LOG_N = 20
# Spec: "The identity implementation SHOULD apply an upper limit to the work factor". Like age
# we stop at 2**22 (4 GiB of scrypt memory) so a hostile header cannot make us spend more.
DEFAULT_MAX_LOG_N = 22

# Spec: "a decimal number composed of only digits with no leading zeroes (`%x31-39 *DIGIT` in
# ABNF or `^[1-9][0-9]*$` in regular expression)" — so no sign, no hex, no zero.
_LOG_N_SYNTAX = re.compile(r"[1-9][0-9]*")


def wrap_key(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    """Derive the key that seals the file key, with the age-labelled salt."""
    kdf = Scrypt(salt=STANZA_LABEL + salt, length=WRAP_KEY_SIZE, n=1 << log_n, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(passphrase)


def make_stanza(file_key: bytes, passphrase: bytes, log_n: int) -> Stanza:
    """Seal `file_key` under `passphrase` with a fresh random salt."""
    if not MIN_WRITE_LOG_N <= log_n <= MAX_WRITE_LOG_N:
        raise ValueError(f"log_n must be in {MIN_WRITE_LOG_N}..{MAX_WRITE_LOG_N}, not {log_n}")
    if not passphrase:
        raise ValueError("passphrase must not be empty")
    salt = os.urandom(SALT_SIZE)
    body = ChaCha20Poly1305(wrap_key(passphrase, salt, log_n)).encrypt(WRAP_NONCE, file_key, None)
    return Stanza(STANZA_TYPE, (b64encode(salt).decode("ascii"), str(log_n)), body)


def check_alone(stanzas: tuple[Stanza, ...]) -> None:
    """Spec: "An scrypt stanza, if present, MUST be the only stanza in the header." """
    if len(stanzas) > 1 and any(s.type == STANZA_TYPE for s in stanzas):
        raise AgeHeaderError("an scrypt stanza must be the only stanza in the header")


def unwrap(stanzas: tuple[Stanza, ...], passphrase: bytes, max_log_n: int = DEFAULT_MAX_LOG_N) -> bytes:
    """Return the file key sealed in the scrypt stanza, or raise AgeNoMatchError."""
    check_alone(stanzas)
    for stanza in stanzas:
        # Stanza types are case-sensitive: "Scrypt" is some other recipient, not ours.
        if stanza.type == STANZA_TYPE:
            return _unwrap_one(stanza, passphrase, max_log_n)
    raise AgeNoMatchError("the file has no scrypt stanza, so a passphrase cannot open it")


def _unwrap_one(stanza: Stanza, passphrase: bytes, max_log_n: int) -> bytes:
    """Check the stanza's syntax strictly, then try the passphrase."""
    if len(stanza.args) != 2:
        raise AgeHeaderError(f"scrypt stanza needs 2 arguments, has {len(stanza.args)}")
    salt = b64decode(stanza.args[0].encode("ascii"))
    if len(salt) != SALT_SIZE:
        raise AgeHeaderError(f"scrypt salt is {len(salt)} bytes, expected {SALT_SIZE}")
    if _LOG_N_SYNTAX.fullmatch(stanza.args[1]) is None:
        raise AgeHeaderError(f"scrypt work factor {stanza.args[1][:40]!r} is not canonical decimal")
    # Compare as text length first so a 10**100 work factor is not even converted.
    if len(stanza.args[1]) > 3 or int(stanza.args[1]) > max_log_n:
        raise AgeWorkFactorError(f"scrypt work factor {stanza.args[1][:40]} is above {max_log_n}")
    log_n = int(stanza.args[1])
    # Spec: it "MUST check that the body length is exactly 32 bytes before attempting to decrypt
    # it, to mitigate partitioning oracle attacks."
    if len(stanza.body) != BODY_SIZE:
        raise AgeHeaderError(f"scrypt stanza body is {len(stanza.body)} bytes, expected {BODY_SIZE}")
    key = wrap_key(passphrase, salt, log_n)
    try:
        return ChaCha20Poly1305(key).decrypt(WRAP_NONCE, stanza.body, None)
    except InvalidTag:
        raise AgeNoMatchError("wrong passphrase: the scrypt stanza does not open") from None

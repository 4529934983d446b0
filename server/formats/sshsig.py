"""OpenSSH SSHSIG signatures (PROTOCOL.sshsig) with ed25519 keys: sign, verify, armor.

Output is what `ssh-keygen -Y sign` writes, so stock OpenSSH verifies it with
`ssh-keygen -Y verify`; see docs/receipts.md for the byte layout.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAGIC = b"SSHSIG"
VERSION = 1
KEY_TYPE = b"ssh-ed25519"
HASH_ALGORITHM = b"sha512"
BEGIN = "-----BEGIN SSH SIGNATURE-----"
END = "-----END SSH SIGNATURE-----"
ARMOR_WIDTH = 70          # what ssh-keygen writes (sshbuf_dtob64 wraps at 70)
MAX_ARMORED = 4096        # an ed25519 signature is ~300 bytes armored; refuse anything huge


class SignatureError(ValueError):
    """The signature is malformed, for another namespace or key, or does not match the message."""


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise SignatureError("signature blob is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint32(self) -> int:
        return struct.unpack(">I", self.raw(4))[0]

    def string(self) -> bytes:
        return self.raw(self.uint32())

    def done(self) -> None:
        if self.pos != len(self.data):
            raise SignatureError("signature blob has trailing bytes")


def public_blob(key: Ed25519PublicKey) -> bytes:
    """The SSH wire encoding of an ed25519 public key (RFC 8709)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _string(KEY_TYPE) + _string(raw)


def public_line(key: Ed25519PublicKey) -> str:
    """`ssh-ed25519 AAAA...` as in an authorized_keys or allowed_signers file."""
    return f"{KEY_TYPE.decode()} {base64.b64encode(public_blob(key)).decode()}"


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA256:... as `ssh-keygen -l` prints it."""
    digest = hashlib.sha256(public_blob(key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def signed_data(namespace: str, message: bytes) -> bytes:
    """What the key actually signs: preamble, namespace, reserved, hash algorithm, H(message)."""
    return (MAGIC + _string(namespace.encode()) + _string(b"") + _string(HASH_ALGORITHM)
            + _string(hashlib.sha512(message).digest()))


def sign(key: Ed25519PrivateKey, namespace: str, message: bytes) -> str:
    """An armored SSHSIG signature of `message` in `namespace`."""
    if not namespace:
        raise ValueError("the SSHSIG namespace must not be empty")
    signature = key.sign(signed_data(namespace, message))
    blob = (MAGIC + struct.pack(">I", VERSION) + _string(public_blob(key.public_key()))
            + _string(namespace.encode()) + _string(b"") + _string(HASH_ALGORITHM)
            + _string(_string(KEY_TYPE) + _string(signature)))
    text = base64.b64encode(blob).decode()
    lines = [text[i:i + ARMOR_WIDTH] for i in range(0, len(text), ARMOR_WIDTH)]
    return "\n".join([BEGIN, *lines, END]) + "\n"


@dataclass(frozen=True)
class Parsed:
    public_key: Ed25519PublicKey
    namespace: str
    hash_algorithm: str
    signature: bytes


def parse(armored: str | bytes) -> Parsed:
    """Decode an armored signature; raises SignatureError naming what is wrong."""
    if isinstance(armored, bytes):
        try:
            armored = armored.decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("signature is not ASCII armor") from None
    if len(armored) > MAX_ARMORED:
        raise SignatureError("signature is too long to be an ed25519 SSH signature")
    text = armored.strip()
    if not text.startswith(BEGIN) or not text.endswith(END):
        raise SignatureError(f"signature must start with {BEGIN} and end with {END}")
    body = "".join(text[len(BEGIN):-len(END)].split())
    try:
        blob = base64.b64decode(body, validate=True)
    except ValueError:
        raise SignatureError("signature armor is not valid base64") from None
    r = _Reader(blob)
    if r.raw(6) != MAGIC:
        raise SignatureError("not an SSHSIG signature (bad magic)")
    version = r.uint32()
    if version != VERSION:
        raise SignatureError(f"unsupported SSHSIG version {version}")
    key_reader = _Reader(r.string())
    if key_reader.string() != KEY_TYPE:
        raise SignatureError("only ssh-ed25519 signatures are supported")
    raw_key = key_reader.string()
    key_reader.done()
    namespace = r.string().decode("utf-8", "replace")
    r.string()  # reserved: ignored when not empty, as the spec says
    hash_algorithm = r.string().decode("ascii", "replace")
    sig_reader = _Reader(r.string())
    r.done()
    if sig_reader.string() != KEY_TYPE:
        raise SignatureError("signature algorithm is not ssh-ed25519")
    signature = sig_reader.string()
    sig_reader.done()
    if len(raw_key) != 32 or len(signature) != 64:
        raise SignatureError("malformed ed25519 key or signature")
    return Parsed(Ed25519PublicKey.from_public_bytes(raw_key), namespace, hash_algorithm, signature)


def verify(armored: str | bytes, message: bytes, namespace: str,
           allowed: list[Ed25519PublicKey]) -> Ed25519PublicKey:
    """Check `armored` over `message`: namespace, a key in `allowed`, the signature itself.

    Returns the key that signed; raises SignatureError otherwise."""
    parsed = parse(armored)
    if parsed.namespace != namespace:
        raise SignatureError(f"signature is for namespace {parsed.namespace!r}, not {namespace!r}")
    if parsed.hash_algorithm not in ("sha256", "sha512"):
        raise SignatureError(f"unsupported hash algorithm {parsed.hash_algorithm!r}")
    blob = public_blob(parsed.public_key)
    if not any(public_blob(k) == blob for k in allowed):
        raise SignatureError(f"signed by {fingerprint(parsed.public_key)}, which is not an allowed signer")
    digest = (hashlib.sha512 if parsed.hash_algorithm == "sha512" else hashlib.sha256)(message).digest()
    data = (MAGIC + _string(namespace.encode()) + _string(b"") + _string(parsed.hash_algorithm.encode())
            + _string(digest))
    try:
        parsed.public_key.verify(parsed.signature, data)
    except InvalidSignature:
        raise SignatureError("signature does not match the message (the receipt was changed)") from None
    return parsed.public_key


def parse_public_line(line: str) -> Ed25519PublicKey:
    """The key of an `ssh-ed25519 AAAA... [comment]` line (or an allowed_signers line)."""
    words = line.split()
    for i, word in enumerate(words[:-1]):
        if word == KEY_TYPE.decode():
            try:
                r = _Reader(base64.b64decode(words[i + 1], validate=True))
            except ValueError:
                break
            if r.string() == KEY_TYPE:
                raw = r.string()
                if len(raw) == 32:
                    return Ed25519PublicKey.from_public_bytes(raw)
            break
    raise SignatureError(f"no ssh-ed25519 public key in {line[:80]!r}")

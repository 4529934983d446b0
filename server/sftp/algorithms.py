"""The SSH algorithms sluis offers: modern only, the same list for every connection.

asyncssh's defaults add SHA-1 key exchange and MACs, NIST ECDH, @ssh.com names, umac-64,
1024-bit group exchange and `ssh-rsa` host signatures; here each list is spelled out instead.
Key exchange is hybrid post-quantum ML-KEM first, then curve25519 (every current OpenSSH, PuTTY,
paramiko); no finite-field Diffie-Hellman at all, so no group exchange. `sntrup761x25519` would
need liboqs, which asyncssh loads only if it is installed (it is not packaged in Debian 12);
`available_kex()` adds it when it is there. Strict key exchange (`kex-strict-s-v00@openssh.com`,
the Terrapin fix) is advertised by asyncssh itself; tests/test_algorithms.py checks it.
"""

from __future__ import annotations

from typing import Any, Sequence

import asyncssh
from asyncssh.kex import get_kex_algs
from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import SluisError

_PREFERRED_KEX = (b"mlkem768x25519-sha256", b"sntrup761x25519-sha512", b"sntrup761x25519-sha512@openssh.com",
                  b"curve25519-sha256", b"curve25519-sha256@libssh.org")
# AEAD first; AES-CTR only for older clients, and then only with encrypt-then-MAC SHA-2.
ENCRYPTION = ("chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com",
              "aes256-ctr", "aes192-ctr", "aes128-ctr")
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
COMPRESSION = ("none",)
# Signatures the server names in `server-sig-algs` for user keys: no ssh-rsa (SHA-1), no @ssh.com.
# asyncssh only advertises this list; it still verifies an ssh-rsa signature a client sends anyway.
USER_SIGNATURES = ("ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ssh-ed448", "rsa-sha2-512", "rsa-sha2-256",
                   "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                   "sk-ecdsa-sha2-nistp256@openssh.com")
RSA_HOST_SIGNATURES = (b"rsa-sha2-512", b"rsa-sha2-256")
RSA_MIN_BITS = 3072


class HostKeyError(SluisError):
    """A configured host key of a type or size sluis does not serve."""


def available_kex() -> tuple[str, ...]:
    """The preferred key exchanges this asyncssh build can do (ML-KEM needs cryptography 44+,
    sntrup761 needs liboqs)."""
    supported = set(get_kex_algs())
    return tuple(alg.decode() for alg in _PREFERRED_KEX if alg in supported)


def host_keypairs(keys: Sequence[asyncssh.SSHKey]) -> list[asyncssh.SSHKeyPair]:
    """Key pairs for `server_host_keys`: ed25519, or RSA of at least 3072 bits signing with SHA-2.

    Replaces asyncssh's behaviour of offering every host key algorithm a key can do: for RSA
    that includes `ssh-rsa` (SHA-1) and four `@ssh.com` variants. The pair's
    `host_key_algorithms` is narrowed here (asyncssh builds its host key offer from it).
    """
    pairs = []
    for key in keys:
        algorithm = key.get_algorithm()
        pair = asyncssh.load_keypairs([key])[0]
        if algorithm == "ssh-ed25519":
            pairs.append(pair)
        elif algorithm == "ssh-rsa":
            rsa_key = key.pyca_key
            if not isinstance(rsa_key, rsa.RSAPrivateKey):
                raise HostKeyError(f"the host key {_name(key)} says ssh-rsa but is no RSA private key")
            bits = rsa_key.key_size
            if bits < RSA_MIN_BITS:
                raise HostKeyError(f"the RSA host key {_name(key)} has {bits} bits; "
                                   f"sluis needs at least {RSA_MIN_BITS} (or use ed25519)")
            pair.host_key_algorithms = RSA_HOST_SIGNATURES
            pair.sig_algorithms = RSA_HOST_SIGNATURES
            pairs.append(pair)
        else:
            raise HostKeyError(f"the host key {_name(key)} is {algorithm}; sluis serves ed25519 "
                               f"(or RSA of at least {RSA_MIN_BITS} bits)")
    return pairs


def _name(key: asyncssh.SSHKey) -> str:
    filename = key.get_filename()
    return filename.decode(errors="replace") if filename else "(unnamed)"


def server_options() -> dict[str, Any]:
    """The keyword arguments for `asyncssh.create_server` that fix the algorithms."""
    return {"kex_algs": list(available_kex()), "encryption_algs": list(ENCRYPTION), "mac_algs": list(MACS),
            "compression_algs": list(COMPRESSION), "signature_algs": list(USER_SIGNATURES)}

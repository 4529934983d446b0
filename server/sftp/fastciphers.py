"""The fast path's packet encryptions: asyncssh 2.24's AEAD and encrypt-then-MAC classes without
their per-packet context creation (server/sftp/fastpath.py registers them at `sluis serve`).

Each produces the same wire bytes as the asyncssh class it replaces (tests/test_fastpath.py
checks that byte for byte, both ways, and that tampering is refused). `seal` returns a packet's
wire bytes in pieces, for fastpath.send_packet to hand to the socket unjoined; `open` takes a
received packet's wire bytes as one view of the receive buffer (length field to tag, no copy
made to gather them) and returns the plaintext packet, or None when the tag does not verify
(server/sftp/fastrecv.py).
"""

from __future__ import annotations

import hmac
from typing import Any, Optional, Tuple, cast

from asyncssh.encryption import BasicEncryption, ChachaEncryption, ETMEncryption, GCMEncryption
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.poly1305 import Poly1305

_GCM_TAG = 16
_U64 = 0xFFFFFFFFFFFFFFFF
_ZERO_BLOCK = bytes(64)       # one ChaCha20 block: its first 32 bytes key Poly1305
_CTR0 = bytes(8)              # ChaCha20 block counter 0 (little-endian), cryptography's 16-byte nonce
_Pieces = Tuple[bytes, ...]


class FastGCMEncryption(GCMEncryption):
    """Replaces GCMEncryption/GCMCipher, which build a new AESGCM (key schedule included) for
    every packet: one AESGCM per direction and key, the invocation counter kept as an int."""

    def __init__(self, key: bytes, iv: bytes) -> None:   # upstream takes a GCMCipher
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._invocation = int.from_bytes(iv[4:], "big")

    @classmethod
    def new(cls, cipher_name: str, key: bytes, iv: bytes, mac_alg: bytes = b"",
            mac_key: bytes = b"", etm: bool = False) -> "FastGCMEncryption":
        return cls(key, iv)

    def _nonce(self) -> bytes:
        nonce = self._fixed + self._invocation.to_bytes(8, "big")
        self._invocation = (self._invocation + 1) & _U64
        return nonce

    def seal(self, seq: int, header: bytes, packet: bytes) -> _Pieces:
        """The packet's wire bytes, in pieces: the length in clear, then ciphertext and tag."""
        return header, self._aead.encrypt(self._nonce(), packet, header)

    def encrypt_packet(self, seq: int, header: bytes, packet: bytes) -> Tuple[bytes, bytes]:
        sealed = self._aead.encrypt(self._nonce(), packet, header)
        return header + sealed[:-_GCM_TAG], sealed[-_GCM_TAG:]

    def open(self, seq: int, wire: memoryview, length: int) -> Optional[bytes]:
        """`decrypt_packet` on the wire bytes in place: ciphertext and tag are contiguous there,
        so AESGCM reads them from the receive buffer (upstream joins them into a new string)."""
        nonce = self._nonce()
        try:
            return self._aead.decrypt(nonce, wire[4:], wire[:4])
        except InvalidTag:
            return None

    def decrypt_packet(self, seq: int, first: bytes, rest: bytes, header_len: int,
                       mac: bytes) -> Optional[bytes]:
        nonce = self._nonce()   # advanced on failure too, as upstream (the connection ends then)
        try:
            return self._aead.decrypt(nonce, b"".join((first[header_len:], rest, mac)), first[:header_len])
        except InvalidTag:
            return None


class FastChachaEncryption(ChachaEncryption):
    """Replaces ChachaEncryption/ChachaCipher, which create three ChaCha20 contexts per packet
    (length, Poly1305 key, data) and concatenate header and data for Poly1305: here two contexts
    per direction and key, moved to each packet's nonce (its sequence number) with `reset_nonce`
    (cryptography ≥ 43: no new OpenSSL context, no per-call checks); the main one yields the
    Poly1305 key (block 0) and then the data keystream (block 1 on), and Poly1305 is fed the
    pieces. Same construction as OpenSSH's chacha20-poly1305@openssh.com (PROTOCOL.chacha20poly1305).
    One object serves one direction of one connection, on its event loop: each use starts with
    `reset_nonce`, so a context never carries state from one packet to the next."""

    def __init__(self, key: bytes) -> None:   # upstream takes a ChachaCipher
        self._main = Cipher(ChaCha20(key[:32], bytes(16)), mode=None).encryptor()
        self._length = Cipher(ChaCha20(key[32:], bytes(16)), mode=None).encryptor()

    def _at(self, context: Any, seq: int) -> Any:
        """`context` at block 0 of the keystream for the packet with sequence number `seq`."""
        context.reset_nonce(_CTR0 + seq.to_bytes(8, "big"))
        return context

    @classmethod
    def new(cls, cipher_name: str, key: bytes, iv: bytes, mac_alg: bytes = b"",
            mac_key: bytes = b"", etm: bool = False) -> "FastChachaEncryption":
        return cls(key)

    def _contexts(self, seq: int) -> tuple[Any, bytes]:
        stream = self._at(self._main, seq)
        return stream, stream.update(_ZERO_BLOCK)[:32]

    def seal(self, seq: int, header: bytes, packet: bytes) -> _Pieces:
        length = self._at(self._length, seq).update(header)
        stream, poly_key = self._contexts(seq)
        data = stream.update(packet)
        tag = Poly1305(poly_key)
        tag.update(length)
        tag.update(data)
        return length, data, tag.finalize()

    def encrypt_packet(self, seq: int, header: bytes, packet: bytes) -> Tuple[bytes, bytes]:
        length, data, tag = self.seal(seq, header, packet)
        return length + data, tag

    def decrypt_header(self, seq: int, first_block: bytes, header_len: int) -> Tuple[bytes, bytes]:
        return first_block, self._at(self._length, seq).update(first_block[:header_len])

    def open(self, seq: int, wire: memoryview, length: int) -> Optional[bytes]:
        """`decrypt_packet` on the wire bytes in place: Poly1305 over length and ciphertext in one
        piece, checked before anything is decrypted; the data decrypted straight from the buffer."""
        stream, poly_key = self._contexts(seq)
        end = 4 + length
        check = Poly1305(poly_key)
        check.update(wire[:end])
        try:
            check.verify(bytes(wire[end:]))   # the tag: Poly1305.verify takes bytes only
        except InvalidSignature:
            return None
        return stream.update(wire[4:end])

    def decrypt_packet(self, seq: int, first: bytes, rest: bytes, header_len: int,
                       mac: bytes) -> Optional[bytes]:
        stream, poly_key = self._contexts(seq)
        check = Poly1305(poly_key)
        check.update(first)
        check.update(rest)
        try:
            check.verify(mac)   # the tag is checked before anything is decrypted
        except InvalidSignature:
            return None
        return stream.update(first[header_len:] + rest)


class FastETMEncryption(ETMEncryption):
    """Replaces ETMEncryption's MAC, which runs `hmac.new(key, UInt32(seq) + packet)` (key
    schedule and a copy of the packet) per packet: a keyed HMAC is copied and fed the pieces."""

    def __init__(self, cipher: Any, mac: Any) -> None:
        super().__init__(cipher, mac)
        self._keyed = hmac.new(mac._key, digestmod=mac._hash_alg)
        self._mac_size = mac._hash_size

    def _sign(self, seq: int, *pieces: bytes | memoryview) -> bytes:
        h = self._keyed.copy()
        h.update(seq.to_bytes(4, "big"))
        for piece in pieces:
            h.update(piece)
        return h.digest()[:self._mac_size]

    def seal(self, seq: int, header: bytes, packet: bytes) -> _Pieces:
        data = self._cipher.encrypt(packet)
        return header, data, self._sign(seq, header, data)

    def encrypt_packet(self, seq: int, header: bytes, packet: bytes) -> Tuple[bytes, bytes]:
        data = self._cipher.encrypt(packet)
        return header + data, self._sign(seq, header, data)

    def open(self, seq: int, wire: memoryview, length: int) -> Optional[bytes]:
        """`decrypt_packet` on the wire bytes in place (length in clear, ciphertext, MAC)."""
        end = 4 + length
        if not hmac.compare_digest(self._sign(seq, wire[:end]), wire[end:]):
            return None
        # BasicCipher.decrypt is annotated bytes; it hands the buffer to cryptography, which takes views.
        return self._cipher.decrypt(cast(bytes, wire[4:end]))

    def decrypt_packet(self, seq: int, first: bytes, rest: bytes, header_len: int,
                       mac: bytes) -> Optional[bytes]:
        if not hmac.compare_digest(self._sign(seq, first, rest), mac):
            return None
        return self._cipher.decrypt(first[header_len:] + rest)


class FastBasicEncryption(BasicEncryption):
    """Registered for the CTR ciphers in place of BasicEncryption: `new` is upstream's except
    that encrypt-then-MAC with an HMAC gets FastETMEncryption (everything else is unchanged)."""

    @classmethod
    def new(cls, cipher_name: str, key: bytes, iv: bytes, mac_alg: bytes = b"",
            mac_key: bytes = b"", etm: bool = False) -> BasicEncryption:
        made = BasicEncryption.new(cipher_name, key, iv, mac_alg, mac_key, etm)
        if type(made) is ETMEncryption and hasattr(made._mac, "_hash_alg"):
            return FastETMEncryption(made._cipher, made._mac)
        return made

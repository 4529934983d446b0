"""Bech32 (BIP 173) for age keys: `age1...` recipients and `AGE-SECRET-KEY-1...` identities.

Spec: "Bech32 is as specified in BIP173, but without length limits on the data part. Note that
Bech32 strings can only be all uppercase or all lowercase, but the checksum is always computed
over the lowercase string." (A post-quantum recipient is ~1,950 characters, far over BIP 173's 90.)
"""

from __future__ import annotations

# BIP 173: the data alphabet, 5 bits per character.
CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
# BIP 173: "the separator, which is always '1'"; the last '1' splits off the HRP, which may contain '1'.
SEPARATOR = "1"
CHECKSUM_LENGTH = 6
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_VALUES = {c: i for i, c in enumerate(CHARSET)}


def _polymod(values: list[int]) -> int:
    """The BCH checksum polynomial of BIP 173."""
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GENERATOR[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    """BIP 173: the HRP enters the checksum as its high bits, a zero, then its low bits."""
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    """Regroup bits; when decoding (pad=False) leftover bits must be fewer than 5 and all zero."""
    acc = 0
    bits = 0
    out: list[int] = []
    max_value = (1 << to_bits) - 1
    max_acc = (1 << (from_bits + to_bits - 1)) - 1  # keeps `acc` small on long strings
    for value in data:
        acc = ((acc << from_bits) | value) & max_acc
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & max_value)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & max_value)
    elif bits >= from_bits or (acc << (to_bits - bits)) & max_value:
        raise ValueError("bech32 data has non-zero or excess padding bits")
    return out


def encode(hrp: str, data: bytes) -> str:
    """Encode `data` under the lowercase form of `hrp`; the caller uppercases identities."""
    hrp = hrp.lower()
    values = _convert_bits(data, 8, 5, pad=True)
    checksum = _polymod(_hrp_expand(hrp) + values + [0] * CHECKSUM_LENGTH) ^ 1
    values += [(checksum >> 5 * (CHECKSUM_LENGTH - 1 - i)) & 31 for i in range(CHECKSUM_LENGTH)]
    return hrp + SEPARATOR + "".join(CHARSET[v] for v in values)


def decode(text: str) -> tuple[str, bytes]:
    """Return (lowercase HRP, data); raise ValueError on mixed case, bad characters or checksum."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("bech32 string mixes upper and lower case")
    if any(not 33 <= ord(c) <= 126 for c in text):
        raise ValueError("bech32 string has a character outside 33..126")
    text = text.lower()
    pos = text.rfind(SEPARATOR)
    if pos < 1 or pos + 1 + CHECKSUM_LENGTH > len(text):
        raise ValueError("bech32 string has no HRP or is too short")
    hrp = text[:pos]
    try:
        values = [_VALUES[c] for c in text[pos + 1 :]]
    except KeyError:
        raise ValueError("bech32 data has a character outside the alphabet") from None
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise ValueError("bech32 checksum is wrong")
    return hrp, bytes(_convert_bits(values[:-CHECKSUM_LENGTH], 5, 8, pad=False))

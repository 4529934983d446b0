"""Passphrases that protect one delivered file: strong, and easy to read off a phone and type.

Alphabet choice (26 symbols, uppercase only so nobody wonders about case):

* digits 2-9 and the letters A C D E F G H J K M N P R T U W X Y;
* left out because they are mistaken for another symbol on a small phone screen or when read
  aloud: 0/O/Q (zero, oh, and Q whose tail vanishes at small sizes), 1/I/L, 5/S, 2/Z, 8/B and
  V (U/V, and V/W in narrow fonts). In each digit/letter pair we keep the digit, so the
  alphabet is as mixed as possible without any pair that looks alike.

Six groups of four symbols give log2(26) * 24 = 112.8 bits, comfortably above the 100-bit
floor, and each group fits in short-term memory while typing.
"""

from __future__ import annotations

import math
import secrets

PASSPHRASE_ALPHABET = "23456789ACDEFGHJKMNPRTUWXY"
GROUP_SIZE = 4
GROUP_COUNT = 6
SEPARATOR = "-"
PASSPHRASE_BITS = GROUP_COUNT * GROUP_SIZE * math.log2(len(PASSPHRASE_ALPHABET))

# Guard against someone shortening the groups or the alphabet below the promised strength.
assert PASSPHRASE_BITS >= 100, PASSPHRASE_BITS
assert len(set(PASSPHRASE_ALPHABET)) == len(PASSPHRASE_ALPHABET)


def new_passphrase() -> str:
    """Draw a fresh passphrase like `K7RF-2MXD-...` from the OS CSPRNG (`secrets`)."""
    groups = (
        "".join(secrets.choice(PASSPHRASE_ALPHABET) for _ in range(GROUP_SIZE))
        for _ in range(GROUP_COUNT)
    )
    return SEPARATOR.join(groups)

"""Errors raised while reading or writing age files, named for what went wrong.

The classes follow the outcomes the C2SP test vectors distinguish (header failure, no match,
HMAC failure, payload failure), so a caller can tell "wrong passphrase" from "damaged file".
"""

from __future__ import annotations


class AgeError(Exception):
    """Base class: the input is not a valid age file for the key we were given."""


class AgeHeaderError(AgeError):
    """The header does not parse, is not canonical, or breaks a rule of the spec."""


class AgeWorkFactorError(AgeHeaderError):
    """An scrypt stanza asks for more work than we are willing to spend (a denial of service)."""


class AgeNoMatchError(AgeError):
    """No stanza could be unwrapped: wrong passphrase or key, or no stanza of our identities' types."""


class AgeHMACError(AgeError):
    """A file key was unwrapped but the header MAC is wrong: the header was tampered with."""


class AgePayloadError(AgeError):
    """The STREAM payload fails: bad tag, truncation, trailing data or a misplaced empty chunk."""


class AgeArmorError(AgeError):
    """The ASCII armor around the file does not follow the strict PEM rules of the spec."""

"""What the public-key stanzas (X25519 and mlkem768x25519) share: which stanzas an identity
reads, and the strict check of a stanza's one argument and its body before any decryption.

The spec says the same of both types, with only the type and the argument's size changed:
"MUST ignore any stanza that does not have `<type>` as the first argument", "MUST otherwise
reject any stanza that has more or less than two arguments, or where the second argument is not
a canonical base64 encoding of a <size>-byte value", and "It MUST check that the body length is
exactly 32 bytes before attempting to decrypt it, to mitigate partitioning oracle attacks."
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import AgeHeaderError
from .header import FILE_KEY_SIZE, Stanza, b64decode

# Both wrap the 16-byte file key with ChaCha20-Poly1305: a 16-byte tag.
TAG_SIZE = 16
BODY_SIZE = FILE_KEY_SIZE + TAG_SIZE


def first_opening(stanzas: tuple[Stanza, ...], stanza_type: str,
                  open_one: Callable[[Stanza], bytes | None]) -> bytes | None:
    """The file key from the first stanza of `stanza_type` that `open_one` opens, or None.

    Stanzas of other types are ignored; a malformed one of ours raises from `open_one` and
    fails the file."""
    for stanza in stanzas:
        if stanza.type == stanza_type:
            file_key = open_one(stanza)
            if file_key is not None:
                return file_key
    return None


def checked_argument(stanza: Stanza, size: int) -> bytes:
    """The stanza's one argument decoded, after checking it is canonical base64 of `size` bytes
    and that the body is exactly BODY_SIZE bytes; AgeHeaderError names what is wrong."""
    if len(stanza.args) != 1:
        raise AgeHeaderError(f"{stanza.type} stanza needs 1 argument after the type, has {len(stanza.args)}")
    argument = b64decode(stanza.args[0].encode("ascii"))
    if len(argument) != size:
        raise AgeHeaderError(f"{stanza.type} stanza argument is {len(argument)} bytes, expected {size}")
    if len(stanza.body) != BODY_SIZE:
        raise AgeHeaderError(f"{stanza.type} stanza body is {len(stanza.body)} bytes, expected {BODY_SIZE}")
    return argument

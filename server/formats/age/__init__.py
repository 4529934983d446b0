"""age v1 (C2SP age), scrypt recipient only, streaming: the at-rest format of sluis uploads."""

from .errors import (
    AgeError,
    AgeHeaderError,
    AgeHMACError,
    AgeNoMatchError,
    AgePayloadError,
    AgeWorkFactorError,
)
from .reader import AgeReader, decrypt
from .scrypt import DEFAULT_LOG_N, DEFAULT_MAX_LOG_N
from .stream import CHUNK_SIZE
from .writer import AgeWriter

__all__ = [
    "AgeError",
    "AgeHeaderError",
    "AgeHMACError",
    "AgeNoMatchError",
    "AgePayloadError",
    "AgeReader",
    "AgeWorkFactorError",
    "AgeWriter",
    "CHUNK_SIZE",
    "DEFAULT_LOG_N",
    "DEFAULT_MAX_LOG_N",
    "decrypt",
]

"""Streaming writer for one-member zip files encrypted with WinZip AE-2 AES-256.

Record layout, key derivation and limits are described in docs/zip.md. The writer never
seeks: sizes go in a data descriptor (general-purpose flag bit 3), so `out` may be a pipe.
"""

from __future__ import annotations

import os
import struct
import zlib
from datetime import datetime, timezone
from types import TracebackType
from typing import ClassVar

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from .sink import Sink

# --- PKWARE APPNOTE.TXT 6.3.x -------------------------------------------------------------
SIG_LOCAL_FILE_HEADER = 0x04034B50  # "PK\x03\x04", APPNOTE 4.3.7
SIG_DATA_DESCRIPTOR = 0x08074B50  # "PK\x07\x08", APPNOTE 4.3.9
SIG_CENTRAL_DIRECTORY = 0x02014B50  # "PK\x01\x02", APPNOTE 4.3.12
SIG_ZIP64_END_OF_CD = 0x06064B50  # "PK\x06\x06", APPNOTE 4.3.14
SIG_ZIP64_END_OF_CD_LOCATOR = 0x07064B50  # "PK\x06\x07", APPNOTE 4.3.15
SIG_END_OF_CD = 0x06054B50  # "PK\x05\x06", APPNOTE 4.3.16

FLAG_ENCRYPTED = 1 << 0  # bit 0: "the file is encrypted"
FLAG_DATA_DESCRIPTOR = 1 << 3  # bit 3: crc/sizes follow the data (we cannot seek back)
FLAG_UTF8 = 1 << 11  # bit 11: "language encoding flag (EFS)": name is UTF-8

METHOD_STORED = 0
METHOD_DEFLATED = 8
METHOD_WINZIP_AES = 99  # WinZip AES spec: "compression method 99" means AES-encrypted

HEADER_ID_ZIP64 = 0x0001  # APPNOTE 4.5.3 "Zip64 extended information extra field"
HEADER_ID_EXTENDED_TIMESTAMP = 0x5455  # Info-ZIP "UT": UTC mtime (DOS time has no zone)
HEADER_ID_WINZIP_AES = 0x9901  # WinZip AES spec: "Extra field header ID = 0x9901"

AE_VERSION_AE2 = 0x0002  # "AE-2": the CRC field is 0, integrity comes from the HMAC
AE_VENDOR_ID = b"AE"  # WinZip AES spec: "vendor ID ... always the string 'AE'"
AE_STRENGTH_AES256 = 0x03  # 1 = AES-128, 2 = AES-192, 3 = AES-256
CRC_AE2 = 0  # AE-2: "the CRC value is not used" and written as 0 in every record

AES_KEY_BYTES = 32  # AES-256
SALT_BYTES = 16  # WinZip AES spec: salt length is 16 bytes for AES-256
VERIFIER_BYTES = 2  # "password verification value"
AUTH_CODE_BYTES = 10  # HMAC-SHA1 truncated to 10 bytes
PBKDF2_ITERATIONS = 1000  # fixed by the WinZip spec; see docs/zip.md on why that is tolerable
AES_BLOCK = 16

# APPNOTE 4.4.3.2 lists 5.1 for AES encryption (7-Zip writes 51 for WinZip AES too); it is
# above 4.5, the version for Zip64, which our local header always uses.
VERSION_NEEDED = 51
VERSION_MADE_BY = (3 << 8) | 63  # host 3 = Unix (external attributes hold a mode), spec 6.3
EXTERNAL_ATTR = (0o100644 << 16)  # regular file, rw-r--r--
DEFLATE_LEVEL = 6
CHUNK = 1 << 20  # bytes of input handled per step: bounds memory whatever `write` is given
DOS_EPOCH = datetime(1980, 1, 1)

# WinZip's CTR mode (Gladman's fileenc.c) uses a 64-bit LITTLE-endian counter in bytes 0..7 of
# the block (bytes 8..15 stay 0), starting at 1; cryptography's CTR mode counts big-endian, so
# we build counter blocks ourselves and encrypt them with ECB. Counter values are produced a
# "window" of 65536 at a time: within a window only bytes 0..1 vary, so one precomputed
# template serves every window once bytes 2..7 are stamped with the window number.
WINDOW_BLOCKS = 1 << 16
_COUNTER_TEMPLATE = b"".join(
    j.to_bytes(2, "little") + bytes(AES_BLOCK - 2) for j in range(WINDOW_BLOCKS)
)


class ZipAesError(Exception):
    """Base class for errors raised by the AES zip writer."""


class InvalidMemberNameError(ZipAesError, ValueError):
    """The member name cannot be stored safely in a zip."""


class EmptyPassphraseError(ZipAesError, ValueError):
    """An empty passphrase would make the encryption meaningless."""


class WriterClosedError(ZipAesError):
    """The writer was used after close() or after a failure."""


def _check_member_name(name: str) -> bytes:
    """Return `name` as UTF-8 if it is a safe relative zip path, else raise."""
    if not name:
        raise InvalidMemberNameError("member name is empty")
    if "\x00" in name or "\\" in name:
        # NUL truncates names in C readers; 7-Zip on Windows treats '\' as a separator.
        raise InvalidMemberNameError(f"member name {name!r} contains NUL or a backslash")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        # Also rejects absolute paths and a trailing '/', which would denote a directory.
        raise InvalidMemberNameError(f"member name {name!r} is not a plain relative path")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from os.fsdecode of bad bytes
        raise InvalidMemberNameError(f"member name {name!r} is not valid Unicode") from exc
    if len(encoded) > 0xFFFF:
        raise InvalidMemberNameError("member name is longer than 65535 bytes")
    return encoded


def _dos_datetime(moment: datetime) -> tuple[int, int]:
    """Return (time, date) in MS-DOS format, clamped to the representable 1980..2107 range."""
    local = moment.astimezone().replace(tzinfo=None) if moment.tzinfo else moment
    local = min(max(local, DOS_EPOCH), datetime(2107, 12, 31, 23, 59, 58))
    dos_time = (local.hour << 11) | (local.minute << 5) | (local.second // 2)
    dos_date = ((local.year - 1980) << 9) | (local.month << 5) | local.day
    return dos_time, dos_date


def _xor(data: bytes, keystream: bytes) -> bytes:
    """XOR two equally long byte strings (big-int XOR runs in C, unlike a byte loop)."""
    n = len(data)
    return (int.from_bytes(data, "little") ^ int.from_bytes(keystream, "little")).to_bytes(
        n, "little"
    )


class ZipAesWriter:
    """Write a zip holding one WinZip AE-2 AES-256 encrypted member, streaming."""

    # Sizes/offsets at or above this need Zip64 fields; a ClassVar so tests can lower it.
    zip64_limit: ClassVar[int] = 0xFFFFFFFF

    def __init__(
        self,
        out: Sink,
        passphrase: str,
        member_name: str,
        *,
        compress: bool = True,
        mtime: datetime | None = None,
    ) -> None:
        """Validate the arguments, derive the keys and write the local file header."""
        if not passphrase:
            raise EmptyPassphraseError("passphrase is empty")
        self._out = out
        self._name = _check_member_name(member_name)
        self._method = METHOD_DEFLATED if compress else METHOD_STORED
        moment = mtime if mtime is not None else datetime.now(timezone.utc)
        self._dos_time, self._dos_date = _dos_datetime(moment)
        unix = moment.timestamp() if moment.tzinfo else moment.astimezone().timestamp()
        self._unix_mtime = min(max(int(unix), 0), 0xFFFFFFFF)
        self._offset = 0  # bytes written to `out`; the archive starts where `out` stands
        self._closed = False
        self._failed = False

        salt = os.urandom(SALT_BYTES)
        # WinZip AES spec: PBKDF2-HMAC-SHA1 yields the AES key, the HMAC key, then 2 bytes of
        # password verifier. 7-Zip and WinZip feed the passphrase to it as UTF-8.
        derived = PBKDF2HMAC(
            algorithm=hashes.SHA1(),
            length=2 * AES_KEY_BYTES + VERIFIER_BYTES,
            salt=salt,
            iterations=PBKDF2_ITERATIONS,
        ).derive(passphrase.encode("utf-8"))
        aes_key = derived[:AES_KEY_BYTES]
        mac_key = derived[AES_KEY_BYTES : 2 * AES_KEY_BYTES]
        verifier = derived[2 * AES_KEY_BYTES :]
        self._ecb = Cipher(algorithms.AES(aes_key), modes.ECB()).encryptor()
        self._window = 0  # next keystream window to generate
        self._keystream = b""  # generated keystream; used up to _keystream_pos
        self._keystream_pos = 0
        self._mac = hmac.HMAC(mac_key, hashes.SHA1())
        self._deflate = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15) if compress else None
        self._size = 0  # uncompressed bytes
        self._packed = 0  # compressed+encrypted bytes, including salt, verifier, auth code

        self._write_raw(self._local_header())
        self._emit(salt + verifier)

    # ------------------------------------------------------------------ public interface

    def write(self, data: bytes | memoryview) -> None:
        """Compress, encrypt and write `data`; memory stays bounded by CHUNK."""
        self._require_open()
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            piece = bytes(view[start : start + CHUNK])
            self._size += len(piece)
            self._encrypt(self._deflate.compress(piece) if self._deflate else piece)

    def close(self) -> None:
        """Finish the member, then write the central directory and end records (not out)."""
        if self._failed:
            raise WriterClosedError("the zip writer failed earlier; the archive is unusable")
        if self._closed:
            return
        if self._deflate is not None:
            self._encrypt(self._deflate.flush())
        self._emit(self._mac.finalize()[:AUTH_CODE_BYTES])
        # Zip64 data descriptor (8-byte sizes): the local header carries a Zip64 field because
        # the size was unknown when it was written, and APPNOTE 4.3.9.2 ties the two together.
        self._write_raw(
            struct.pack("<IIQQ", SIG_DATA_DESCRIPTOR, CRC_AE2, self._packed, self._size)
        )
        cd_offset = self._offset
        self._write_raw(self._central_header())
        self._write_end_records(cd_offset, self._offset - cd_offset)
        self._closed = True

    def __enter__(self) -> ZipAesWriter:
        """Return self, for use in a `with` block."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Finish the zip only if the block succeeded."""
        # On an error we must NOT close: the HMAC would authenticate a truncated file, and
        # 7-Zip would extract it without complaint. An unfinished zip is unreadable instead.
        if exc_type is None:
            self.close()
        else:
            self._closed = self._failed = True

    # ------------------------------------------------------------------ encryption

    def _next_window(self) -> bytes:
        """Return the keystream for the next window of 65536 counter values."""
        window = self._window
        if window >= 1 << 48:  # 2**64 blocks: unreachable, but never reuse a counter
            raise ZipAesError("AES-CTR counter exhausted")
        self._window += 1
        counters = bytearray(_COUNTER_TEMPLATE)
        for index, byte in enumerate(window.to_bytes(6, "little"), start=2):
            if byte:
                counters[index::AES_BLOCK] = bytes([byte]) * WINDOW_BLOCKS
        keystream = self._ecb.update(bytes(counters))
        # Counting starts at 1: the first window skips the block for counter 0.
        return keystream[AES_BLOCK:] if window == 0 else keystream

    def _encrypt(self, plaintext: bytes) -> None:
        """Encrypt and emit `plaintext`; CTR needs no block alignment, only keystream order."""
        if not plaintext:
            return
        end = self._keystream_pos + len(plaintext)
        if end > len(self._keystream):
            rest = self._keystream[self._keystream_pos :]
            while len(rest) < len(plaintext):
                rest += self._next_window()
            self._keystream, self._keystream_pos, end = rest, 0, len(plaintext)
        keystream = self._keystream[self._keystream_pos : end]
        self._keystream_pos = end
        self._emit_ciphertext(_xor(plaintext, keystream))

    def _emit_ciphertext(self, ciphertext: bytes) -> None:
        """Authenticate and write ciphertext (AE-2 MACs the encrypted data only)."""
        self._mac.update(ciphertext)
        self._emit(ciphertext)

    def _emit(self, data: bytes) -> None:
        """Write member data, counting it towards the compressed size."""
        self._packed += len(data)
        self._write_raw(data)

    def _write_raw(self, data: bytes) -> None:
        """Write bytes to `out`, tracking the archive offset; a failure poisons the writer."""
        try:
            self._out.write(data)
        except BaseException:
            self._closed = self._failed = True
            raise
        self._offset += len(data)

    def _require_open(self) -> None:
        """Raise if the writer can no longer be written to."""
        if self._failed:
            raise WriterClosedError("the zip writer failed earlier; the archive is unusable")
        if self._closed:
            raise WriterClosedError("the zip writer is already closed")

    # ------------------------------------------------------------------ records

    def _common_extras(self) -> bytes:
        """Return the AES (0x9901) and extended timestamp (0x5455) extra fields."""
        aes = struct.pack(
            "<HHH2sBH",
            HEADER_ID_WINZIP_AES,
            7,  # data size: version(2) + vendor(2) + strength(1) + method(2)
            AE_VERSION_AE2,
            AE_VENDOR_ID,
            AE_STRENGTH_AES256,
            self._method,
        )
        timestamp = struct.pack("<HHBI", HEADER_ID_EXTENDED_TIMESTAMP, 5, 1, self._unix_mtime)
        return aes + timestamp

    def _flags(self) -> int:
        """Return the general-purpose bit flags shared by local and central headers."""
        return FLAG_ENCRYPTED | FLAG_DATA_DESCRIPTOR | FLAG_UTF8

    def _local_header(self) -> bytes:
        """Return the local file header, with a Zip64 field since the size is unknown yet."""
        # APPNOTE 4.5.3: a local Zip64 field holds both sizes; with bit 3 set they are 0.
        zip64 = struct.pack("<HHQQ", HEADER_ID_ZIP64, 16, 0, 0)
        extra = zip64 + self._common_extras()
        fixed = struct.pack(
            "<IHHHHHIIIHH",
            SIG_LOCAL_FILE_HEADER,
            VERSION_NEEDED,
            self._flags(),
            METHOD_WINZIP_AES,
            self._dos_time,
            self._dos_date,
            CRC_AE2,
            0xFFFFFFFF,  # sizes are in the Zip64 field (and really in the data descriptor)
            0xFFFFFFFF,
            len(self._name),
            len(extra),
        )
        return fixed + self._name + extra

    def _central_header(self) -> bytes:
        """Return the central directory header, with Zip64 fields only where needed."""
        limit = self.zip64_limit
        zip64_values = []
        size32, packed32 = self._size, self._packed
        # APPNOTE 4.5.3: only the fields that overflow go in, in this fixed order.
        if self._size >= limit:
            zip64_values.append(self._size)
            size32 = 0xFFFFFFFF
        if self._packed >= limit:
            zip64_values.append(self._packed)
            packed32 = 0xFFFFFFFF
        extra = b""
        if zip64_values:
            extra = struct.pack(
                f"<HH{len(zip64_values)}Q", HEADER_ID_ZIP64, 8 * len(zip64_values), *zip64_values
            )
        extra += self._common_extras()
        fixed = struct.pack(
            "<IHHHHHHIIIHHHHHII",
            SIG_CENTRAL_DIRECTORY,
            VERSION_MADE_BY,
            VERSION_NEEDED,
            self._flags(),
            METHOD_WINZIP_AES,
            self._dos_time,
            self._dos_date,
            CRC_AE2,
            packed32,
            size32,
            len(self._name),
            len(extra),
            0,  # file comment length
            0,  # disk number start
            0,  # internal attributes: not declared text (it is encrypted anyway)
            EXTERNAL_ATTR,
            0,  # local header offset: our only member starts the archive, never needs Zip64
        )
        return fixed + self._name + extra

    def _write_end_records(self, cd_offset: int, cd_size: int) -> None:
        """Write the (Zip64 end record, locator and) end of central directory record."""
        limit = self.zip64_limit
        needs_zip64 = cd_offset >= limit or cd_size >= limit
        if needs_zip64:
            zip64_end_offset = self._offset
            self._write_raw(
                struct.pack(
                    "<IQHHIIQQQQ",
                    SIG_ZIP64_END_OF_CD,
                    44,  # size of the remaining record (APPNOTE 4.3.14.1)
                    VERSION_MADE_BY,
                    VERSION_NEEDED,
                    0,  # this disk
                    0,  # disk with the central directory
                    1,  # entries on this disk
                    1,  # entries in total
                    cd_size,
                    cd_offset,
                )
            )
            self._write_raw(
                struct.pack("<IIQI", SIG_ZIP64_END_OF_CD_LOCATOR, 0, zip64_end_offset, 1)
            )
        self._write_raw(
            struct.pack(
                "<IHHHHIIH",
                SIG_END_OF_CD,
                0,
                0,
                1,
                1,
                0xFFFFFFFF if cd_size >= limit else cd_size,
                0xFFFFFFFF if cd_offset >= limit else cd_offset,
                0,  # comment length
            )
        )

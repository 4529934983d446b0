"""WinZip AE-2 AES-256 zip writer: checked against the real 7-Zip and an independent decoder."""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import os
import random
import struct
import subprocess
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sluis.server.formats.zipaes import (
    AES_BLOCK,
    EmptyPassphraseError,
    InvalidMemberNameError,
    WriterClosedError,
    ZipAesWriter,
)
from tests.support.clients import require_binary

PASSPHRASE = "Kx7-tuin-ROOS-9vlak-Q2"
TIMEOUT = 60
ENV = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC"}


class NonSeekable:
    """A write-only sink: proves the writer never seeks or tells."""

    def __init__(self, path: Path) -> None:
        """Open `path` for writing."""
        self._file = path.open("wb")

    def write(self, data: bytes) -> int:
        """Write `data`."""
        return self._file.write(data)

    def close(self) -> None:
        """Close the underlying file."""
        self._file.close()


def make_zip(
    path: Path,
    data: bytes,
    *,
    name: str = "bestand.bin",
    compress: bool = True,
    piece: int = 100_003,
    writer: type[ZipAesWriter] = ZipAesWriter,
    mtime: datetime | None = None,
    passphrase: str = PASSPHRASE,
) -> Path:
    """Write `data` as an AES zip at `path`, fed in `piece`-sized writes."""
    sink = NonSeekable(path)
    w = writer(sink, passphrase, name, compress=compress, mtime=mtime)  # type: ignore[arg-type]
    for start in range(0, len(data), piece):
        w.write(data[start : start + piece])
    w.close()
    sink.close()
    return path


def seven(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run 7-Zip with `args`, capturing text output."""
    binary = require_binary("7zz", "7z")
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT, env=ENV
    )


def extract(archive: Path, dest: Path, passphrase: str = PASSPHRASE) -> None:
    """Test and extract `archive` with 7-Zip, asserting both succeed."""
    tested = seven("t", f"-p{passphrase}", archive)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "Everything is Ok" in tested.stdout
    assert "WARNING" not in tested.stdout.upper().replace("WARNINGS: 0", "")
    done = seven("x", f"-p{passphrase}", f"-o{dest}", "-y", archive)
    assert done.returncode == 0, done.stdout + done.stderr


def csv_text(size: int) -> bytes:
    """Return about `size` bytes of compressible CSV-like text."""
    rng = random.Random(7)
    rows = [b"id;naam;gemeente;datum;status\n"]
    total = len(rows[0])
    i = 0
    while total < size:
        row = b"%d;inburgeraar %05d;Genk;2026-%02d-%02d;%s\n" % (
            i, rng.randrange(99999), rng.randrange(1, 13), rng.randrange(1, 29),
            rng.choice([b"actief", b"afgerond", b"gestopt"]),
        )
        rows.append(row)
        total += len(row)
        i += 1
    return b"".join(rows)[:size]


def reference_decrypt(archive: Path, passphrase: str) -> bytes:
    """Decode the single member with a straightforward, independent AE-2 implementation."""
    info = zipfile.ZipFile(archive).infolist()[0]
    raw = archive.read_bytes()
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    extra = raw[info.header_offset + 30 + name_len : start]
    at = extra.index(b"\x01\x99")
    _, size, version, vendor, strength, method = struct.unpack_from("<HHH2sBH", extra, at)
    assert (size, version, vendor, strength) == (7, 2, b"AE", 3)
    member = raw[start : start + info.compress_size]
    salt, verifier, body, code = member[:16], member[16:18], member[18:-10], member[-10:]
    keys = hashlib.pbkdf2_hmac("sha1", passphrase.encode(), salt, 1000, 66)
    assert keys[64:] == verifier, "password verifier mismatch"
    expected = std_hmac.new(keys[32:64], body, "sha1").digest()[:10]
    assert std_hmac.compare_digest(expected, code), "authentication code mismatch"
    blocks = (len(body) + 15) // 16
    counters = b"".join(i.to_bytes(16, "little") for i in range(1, blocks + 1))
    stream = Cipher(algorithms.AES(keys[:32]), modes.ECB()).encryptor().update(counters)
    plain = bytes(a ^ b for a, b in zip(body, stream))
    return zlib.decompress(plain, -15) if method == 8 else plain


SMALL_SIZES = [0, 1, 15, 16, 17, 64 * 1024]


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "deflated"])
@pytest.mark.parametrize("size", SMALL_SIZES)
def test_7zip_round_trip_small(tmp_path: Path, size: int, compress: bool) -> None:
    """Small and block-boundary sizes come back byte-exact from 7-Zip."""
    data = os.urandom(size)
    archive = make_zip(tmp_path / "a.zip", data, compress=compress, piece=7)
    extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "bestand.bin").read_bytes() == data


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "deflated"])
@pytest.mark.parametrize("kind", ["random", "csv"])
def test_7zip_round_trip_megabyte(tmp_path: Path, kind: str, compress: bool) -> None:
    """~1 MiB of random or CSV data (crossing a keystream window) survives 7-Zip."""
    size = (1 << 20) + 12_345
    data = os.urandom(size) if kind == "random" else csv_text(size)
    archive = make_zip(tmp_path / "a.zip", data, compress=compress)
    extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "bestand.bin").read_bytes() == data
    if kind == "csv" and compress:
        assert archive.stat().st_size < size // 3, "CSV text should deflate well"
    assert reference_decrypt(archive, PASSPHRASE) == data


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "deflated"])
def test_7zip_lists_aes256(tmp_path: Path, compress: bool) -> None:
    """7-Zip reports AES-256 with the right inner method, and the flags we set."""
    archive = make_zip(tmp_path / "a.zip", b"x" * 1000, compress=compress)
    listing = seven("l", "-slt", f"-p{PASSPHRASE}", archive)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert "AES-256" in listing.stdout
    method = "AES-256 Deflate" if compress else "AES-256 Store"
    assert f"Method = {method}\n" in listing.stdout
    assert "Encrypted = +" in listing.stdout
    assert "Size = 1000" in listing.stdout
    assert "Zip64" not in listing.stdout.split("----------")[0]  # archive-level: standard


@pytest.mark.parametrize("command", ["t", "x"])
def test_wrong_passphrase_fails(tmp_path: Path, command: str) -> None:
    """7-Zip refuses a wrong passphrase."""
    archive = make_zip(tmp_path / "a.zip", csv_text(5000))
    result = seven(command, "-pnot-the-passphrase", f"-o{tmp_path / 'out'}", "-y", archive)
    assert result.returncode != 0
    assert "Wrong password" in result.stdout + result.stderr


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("compress", [False, True], ids=["stored", "deflated"])
def test_flipped_ciphertext_byte_fails(tmp_path: Path, where: str, compress: bool) -> None:
    """Any changed ciphertext byte is caught by the HMAC (AE-2 has no CRC to fall back on)."""
    data = os.urandom(4000)
    archive = make_zip(tmp_path / "a.zip", data, compress=compress)
    info = zipfile.ZipFile(archive).infolist()[0]
    raw = bytearray(archive.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", raw, 26)
    body_start = 30 + name_len + extra_len + 16 + 2  # after salt and verifier
    body_end = 30 + name_len + extra_len + info.compress_size - 10  # before the auth code
    index = {"first": body_start, "middle": (body_start + body_end) // 2, "last": body_end - 1}
    raw[index[where]] ^= 0x20
    archive.write_bytes(raw)
    result = seven("t", f"-p{PASSPHRASE}", archive)
    assert result.returncode != 0, result.stdout


def test_non_ascii_member_name(tmp_path: Path) -> None:
    """A UTF-8 name (bit 11) comes out of 7-Zip and zipfile unchanged."""
    name = "inburgeraars_Genk_2026 — lijst.csv"
    data = csv_text(3000)
    archive = make_zip(tmp_path / "a.zip", data, name=name)
    extract(archive, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == [name]
    assert (tmp_path / "out" / name).read_bytes() == data
    assert zipfile.ZipFile(archive).namelist() == [name]
    assert f"Path = {name}" in seven("l", "-slt", archive).stdout


def test_non_ascii_passphrase(tmp_path: Path) -> None:
    """A passphrase is fed to PBKDF2 as UTF-8, as 7-Zip does."""
    archive = make_zip(tmp_path / "a.zip", b"geheim", passphrase="wachtwoord-é€")
    extract(archive, tmp_path / "out", passphrase="wachtwoord-é€")
    assert (tmp_path / "out" / "bestand.bin").read_bytes() == b"geheim"


def test_zipfile_reads_central_directory(tmp_path: Path) -> None:
    """Python's zipfile sees name, sizes, method 99 and our flags (it cannot decrypt)."""
    data = csv_text(50_000)
    archive = make_zip(tmp_path / "a.zip", data, name="lijst.csv")
    with zipfile.ZipFile(archive) as zf:
        (info,) = zf.infolist()
        assert info.filename == "lijst.csv"
        assert info.file_size == len(data)
        assert info.compress_size == archive.stat().st_size - (
            30 + len("lijst.csv") + 20 + 11 + 9  # local header + name + zip64/AES/UT extras
            + 24  # Zip64 data descriptor
            + 46 + len("lijst.csv") + 11 + 9  # central header + name + AES/UT extras
            + 22  # end of central directory
        )
        assert info.compress_type == 99
        assert info.flag_bits == 0x1 | 0x8 | 0x800
        assert info.CRC == 0  # AE-2
        assert not info.extra.startswith(b"\x01\x00"), "no Zip64 field for a small file"
    assert b"PK\x06\x06" not in archive.read_bytes()[-200:]


def test_mtime_is_stored(tmp_path: Path) -> None:
    """The given mtime reaches 7-Zip (exactly, via the UT extra field)."""
    moment = datetime(2026, 3, 1, 12, 34, 56, tzinfo=timezone.utc)
    archive = make_zip(tmp_path / "a.zip", b"x", mtime=moment)
    assert "Modified = 2026-03-01 12:34:56" in seven("l", "-slt", archive).stdout


class TinyZip64Writer(ZipAesWriter):
    """Treat anything of 10 bytes or more as needing Zip64, to exercise those records."""

    zip64_limit = 10


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "deflated"])
def test_zip64_records_accepted(tmp_path: Path, compress: bool) -> None:
    """With a lowered limit we emit Zip64 central/end records; 7-Zip and zipfile read them."""
    data = csv_text(200_000)
    archive = make_zip(tmp_path / "a.zip", data, compress=compress, writer=TinyZip64Writer)
    raw = archive.read_bytes()
    assert b"PK\x06\x06" in raw and b"PK\x06\x07" in raw
    eocd = raw[-22:]
    assert eocd[:4] == b"PK\x05\x06"
    assert struct.unpack_from("<II", eocd, 12) == (0xFFFFFFFF, 0xFFFFFFFF)
    with zipfile.ZipFile(archive) as zf:
        (info,) = zf.infolist()
        assert info.file_size == len(data)
        assert info.extra.startswith(b"\x01\x00")
    extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "bestand.bin").read_bytes() == data
    assert "Zip64" in seven("l", "-slt", archive).stdout


def test_keystream_high_counter_bytes() -> None:
    """Windows far into a large file stamp counter bytes 2..7 correctly (little-endian)."""
    import io

    w = ZipAesWriter(io.BytesIO(), PASSPHRASE, "x")
    window = 0x0102030405AB
    w._window = window
    got = w._next_window()
    first = window << 16
    counters = b"".join((first + i).to_bytes(16, "little") for i in (0, 1, 0xFFFF))
    expected = w._ecb.update(counters)
    assert got[:32] == expected[:32]
    assert got[-AES_BLOCK:] == expected[32:]


def test_errors(tmp_path: Path) -> None:
    """Bad arguments and misuse raise errors named for the problem."""
    import io

    with pytest.raises(EmptyPassphraseError):
        ZipAesWriter(io.BytesIO(), "", "a.csv")
    for bad in ["", "/etc/passwd", "a/../b", "dir/", "a\\b", "nul\x00", "\udcff.csv"]:
        with pytest.raises(InvalidMemberNameError):
            ZipAesWriter(io.BytesIO(), PASSPHRASE, bad)
    w = ZipAesWriter(io.BytesIO(), PASSPHRASE, "a.csv")
    w.close()
    w.close()  # idempotent
    with pytest.raises(WriterClosedError):
        w.write(b"late")


def test_failed_block_does_not_finish_zip(tmp_path: Path) -> None:
    """An exception inside `with` leaves an unfinished zip that 7-Zip rejects."""
    path = tmp_path / "a.zip"
    with path.open("wb") as out, pytest.raises(RuntimeError):
        with ZipAesWriter(out, PASSPHRASE, "a.csv") as w:
            w.write(csv_text(10_000))
            raise RuntimeError("upload broke off")
    assert b"PK\x05\x06" not in path.read_bytes()
    assert seven("t", f"-p{PASSPHRASE}", path).returncode != 0
    with pytest.raises(WriterClosedError):
        w.close()

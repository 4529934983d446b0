"""Round trips between sluis.server.formats.age and the real `age` binary (age 1.1.1, Debian).

age only reads passphrases from a terminal, so it runs under a pty (tests/support/pty_age.py).
`age -p` always uses work factor 2**18 (~1 s each way), so there are only three such files.
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path

import pytest

from sluis.server.formats.age import (
    CHUNK_SIZE,
    DEFAULT_LOG_N,
    AgeNoMatchError,
    AgeReader,
    AgeWorkFactorError,
    AgeWriter,
)
from tests.support.clients import require_binary
from tests.support.pty_age import run_age

TIMEOUT = 60.0


def our_encrypt(data: bytes, passphrase: str) -> bytes:
    """Encrypt with our writer at the default work factor, in uneven writes."""
    out = io.BytesIO()
    writer = AgeWriter(out, passphrase)
    step = 1
    pos = 0
    while pos < len(data):
        writer.write(data[pos : pos + step])
        pos += step
        step = step * 3 + 1
    writer.close()
    return out.getvalue()


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 1024 * 1024 + 123],
)
def test_age_decrypts_our_files(tmp_path: Path, size: int) -> None:
    age = require_binary("age")
    data = os.urandom(size)
    passphrase = secrets.token_hex(16)
    encrypted = tmp_path / "file.age"
    encrypted.write_bytes(our_encrypt(data, passphrase))
    # To stdout, not -o: age creates the -o file only on its first write, so never for size 0.
    run = run_age([age, "-d", str(encrypted)], [passphrase], timeout=TIMEOUT)
    assert run.returncode == 0, run.terminal
    assert run.stdout == data


def test_age_rejects_our_file_with_wrong_passphrase(tmp_path: Path) -> None:
    age = require_binary("age")
    encrypted = tmp_path / "file.age"
    encrypted.write_bytes(our_encrypt(b"secret", "right passphrase"))
    run = run_age([age, "-d", str(encrypted)], ["wrong passphrase"], timeout=TIMEOUT)
    assert run.returncode != 0
    assert b"incorrect passphrase" in run.terminal
    assert run.stdout == b""


@pytest.fixture(scope="module")
def age_encrypted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, bytes, str]]:
    """Files encrypted by `age -p`: name -> (plaintext, age file, passphrase)."""
    age = require_binary("age")
    work = tmp_path_factory.mktemp("age-p")
    plaintexts = {
        "empty": b"",
        "two full chunks": os.urandom(2 * CHUNK_SIZE),  # age's final chunk is a full one
        "several chunks": os.urandom(3 * CHUNK_SIZE + 4321),
    }
    files = {}
    for index, (name, data) in enumerate(plaintexts.items()):
        passphrase = secrets.token_hex(16)
        source, target = work / f"{index}.txt", work / f"{index}.age"
        source.write_bytes(data)
        run = run_age([age, "-p", "-o", str(target), str(source)], [passphrase, passphrase], timeout=TIMEOUT)
        assert run.returncode == 0, run.terminal
        files[name] = (data, target.read_bytes(), passphrase)
    return files


@pytest.mark.parametrize("name", ["empty", "two full chunks", "several chunks"])
def test_we_decrypt_age_files(age_encrypted: dict[str, tuple[bytes, bytes, str]], name: str) -> None:
    data, blob, passphrase = age_encrypted[name]
    assert blob.split(b"\n")[1].startswith(b"-> scrypt ")
    reader = AgeReader(io.BytesIO(blob), passphrase)
    assert b"".join(reader) == data
    assert reader.done


def test_wrong_passphrase_on_age_file(age_encrypted: dict[str, tuple[bytes, bytes, str]]) -> None:
    _, blob, _ = age_encrypted["several chunks"]
    with pytest.raises(AgeNoMatchError):
        AgeReader(io.BytesIO(blob), "not the passphrase")


def test_age_work_factor_against_our_limit(age_encrypted: dict[str, tuple[bytes, bytes, str]]) -> None:
    """age -p uses 2**18; a reader limited below that refuses before doing the work."""
    _, blob, passphrase = age_encrypted["empty"]
    assert blob.split(b"\n")[1].endswith(b" 18")
    assert DEFAULT_LOG_N < 18
    with pytest.raises(AgeWorkFactorError):
        AgeReader(io.BytesIO(blob), passphrase, max_log_n=17)

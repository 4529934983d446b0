"""Round trips between sluis.server.formats.age and the real `age` binary (age 1.1.1, Debian).

age only reads passphrases from a terminal, so it runs under a pty (tests/support/pty_age.py).
`age -p` always uses work factor 2**18 (~1 s each way), so there are only three such files.
X25519 keys come from `age-keygen`, and age 1.1.1 reads and writes X25519 files (also armored)
without a terminal. It predates the mlkem768x25519 recipient, which only the vectors check.
"""

from __future__ import annotations

import io
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from sluis.server.formats.age import (
    CHUNK_SIZE,
    DEFAULT_LOG_N,
    AgeNoMatchError,
    AgeReader,
    AgeWorkFactorError,
    AgeWriter,
    X25519Identity,
    parse_recipient,
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


@pytest.mark.parametrize("size", [16 * CHUNK_SIZE, 16 * CHUNK_SIZE + 1, 40 * CHUNK_SIZE + 7])
@pytest.mark.parametrize("piece", [None, 1024 * 1024 + 13, 261_120])
def test_age_decrypts_our_batched_files(tmp_path: Path, size: int, piece: int | None) -> None:
    """Large writes take the writer's batch path (whole chunks sealed into one buffer, 16 at a
    time), as the upload pipeline's 1 MiB batches and OpenSSH's 255 KiB writes (views, not
    chunk-aligned) do: the real age opens the result."""
    age = require_binary("age")
    data = os.urandom(size)
    passphrase = secrets.token_hex(16)
    out = io.BytesIO()
    writer = AgeWriter(out, passphrase)
    step = piece or size
    for pos in range(0, size, step):
        writer.write(memoryview(data)[pos:pos + step])
    writer.close()
    encrypted = tmp_path / "file.age"
    encrypted.write_bytes(out.getvalue())
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


# --- X25519: keys from age-keygen ---------------------------------------------------------------


def run(args: list[str], data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run an age tool with `data` on stdin, bounded by TIMEOUT."""
    return subprocess.run(args, input=data, capture_output=True, timeout=TIMEOUT, check=False)


def keygen(work: Path, name: str) -> tuple[Path, str, str]:
    """Make a key with age-keygen: (identity file, secret key line, public key from `-y`)."""
    key_file = work / name
    made = run([require_binary("age-keygen"), "-o", str(key_file)])
    assert made.returncode == 0, made.stderr
    secret = next(line for line in key_file.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    public = run([require_binary("age-keygen"), "-y", str(key_file)])
    assert public.returncode == 0, public.stderr
    return key_file, secret, public.stdout.decode().strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, str]]:
    """Two age-keygen key pairs: "ours" (the municipality's) and "other" (someone else's)."""
    work = tmp_path_factory.mktemp("age-keys")
    return {name: keygen(work, name) for name in ("ours", "other")}


def encrypt_to(data: bytes, recipients: list[str]) -> bytes:
    """Encrypt with our writer to age1... recipients, in uneven writes."""
    out = io.BytesIO()
    writer = AgeWriter(out, recipients=recipients)
    for start in range(0, len(data), 50_001):
        writer.write(data[start : start + 50_001])
    writer.close()
    return out.getvalue()


def test_our_identity_parsing_matches_age_keygen(keys: dict[str, tuple[Path, str, str]]) -> None:
    for _, secret, public in keys.values():
        identity = X25519Identity.parse(secret)
        assert str(identity.recipient) == public
        assert str(identity) == secret
        assert str(parse_recipient(public)) == public


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 1024 * 1024 + 123])
def test_age_decrypts_our_x25519_files(
    tmp_path: Path, keys: dict[str, tuple[Path, str, str]], size: int
) -> None:
    key_file, _, public = keys["ours"]
    data = os.urandom(size)
    encrypted = tmp_path / "file.age"
    encrypted.write_bytes(encrypt_to(data, [public]))
    assert encrypted.read_bytes().split(b"\n")[1].startswith(b"-> X25519 ")
    decrypted = run([require_binary("age"), "-d", "-i", str(key_file), str(encrypted)])
    assert decrypted.returncode == 0, decrypted.stderr
    assert decrypted.stdout == data


def test_age_decrypts_our_file_for_several_recipients(
    tmp_path: Path, keys: dict[str, tuple[Path, str, str]]
) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 5)
    encrypted = tmp_path / "file.age"
    encrypted.write_bytes(encrypt_to(data, [keys["other"][2], keys["ours"][2]]))
    for key_file, _, _ in keys.values():
        decrypted = run([require_binary("age"), "-d", "-i", str(key_file), str(encrypted)])
        assert decrypted.returncode == 0, decrypted.stderr
        assert decrypted.stdout == data


def test_age_rejects_our_file_for_another_key(tmp_path: Path, keys: dict[str, tuple[Path, str, str]]) -> None:
    encrypted = tmp_path / "file.age"
    encrypted.write_bytes(encrypt_to(b"secret", [keys["ours"][2]]))
    decrypted = run([require_binary("age"), "-d", "-i", str(keys["other"][0]), str(encrypted)])
    assert decrypted.returncode != 0
    assert b"no identity matched" in decrypted.stderr
    assert decrypted.stdout == b""


@pytest.mark.parametrize("armor", [False, True], ids=["binary", "armored"])
@pytest.mark.parametrize("size", [0, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE + 4321])
def test_we_decrypt_age_x25519_files(keys: dict[str, tuple[Path, str, str]], size: int, armor: bool) -> None:
    _, secret, public = keys["ours"]
    data = os.urandom(size)
    made = run([require_binary("age"), *(["-a"] if armor else []), "-r", keys["other"][2], "-r", public], data)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----\n" if armor else b"age-encryption.org/v1\n")
    reader = AgeReader(io.BytesIO(made.stdout), identities=[secret], armored=armor)
    assert b"".join(reader) == data
    assert reader.done
    with pytest.raises(AgeNoMatchError):
        AgeReader(io.BytesIO(made.stdout), identities=[X25519Identity.generate()], armored=armor)

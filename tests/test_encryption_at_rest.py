"""Encryption at rest: what clients upload is stored as age (or AES zip) that the real `age`
binary and 7-Zip open with the SMS passphrase; no plaintext byte ever reaches the data dir."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
from paramiko.sftp import CMD_CLOSE

from sluis.server.core.encryption import age_stored_digest
from tests.support.clients import require_binary
from tests.support.pty_age import run_age
from tests.support.waiting import wait_until

MARKER = b"RIJKSREGISTER;85.07.30-033.28;Peeters;Jan;ja;nee\n"


def plaintext(size: int) -> bytes:
    """Recognisable plaintext (repeated marker) with some random bytes mixed in."""
    body = (MARKER * (size // len(MARKER) + 1))[:size]
    return bytes(b ^ r if i % 97 == 0 else b for i, (b, r) in enumerate(zip(body, os.urandom(size))))


def assert_no_plaintext(root: Path, needle: bytes = MARKER) -> int:
    """Scan every file under `root` (database, WAL, boxes, temporaries) for the plaintext."""
    scanned = 0
    for path in root.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert needle not in content, f"plaintext found in {path}"
            assert needle[:24] not in content, f"plaintext fragment found in {path}"
            scanned += 1
    return scanned


def age_decrypt(path: Path, passphrase: str) -> bytes:
    require_binary("age")
    run = run_age(["age", "-d", str(path)], [passphrase], timeout=60)
    assert run.returncode == 0, run.terminal.decode(errors="replace")
    return run.stdout


def download(server, user: str, name: str, dest: Path) -> Path:
    server.sftp(user, f"get {name} {dest}\n")
    return dest


def test_openssh_upload_opens_with_real_age(server, tmp_path):
    data = plaintext(200_003)
    (tmp_path / "lijst.csv").write_bytes(data)
    server.sftp("agency", f"put {tmp_path / 'lijst.csv'} /genk/lijst.csv\n")
    got = download(server, "genk-clerk", "lijst.csv.age", tmp_path / "got.age")
    assert got.read_bytes().startswith(b"age-encryption.org/v1\n-> scrypt ")
    assert age_decrypt(got, server.passphrase("lijst.csv.age")) == data


def test_psftp_upload_opens_with_real_age(server, tmp_path):
    psftp = require_binary("psftp")
    data = plaintext(150_000)
    (tmp_path / "p.csv").write_bytes(data)
    account = server.accounts["agency"]
    script = tmp_path / "script"
    script.write_text(f"put {tmp_path / 'p.csv'} /genk/p.csv\n")
    result = subprocess.run([psftp, "-batch", "-b", str(script), "-P", str(server.port), "-i", str(account.ppk()),
                             "-hostkey", server.host_key_fingerprint(), "agency@127.0.0.1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    got = download(server, "genk-clerk", "p.csv.age", tmp_path / "p.age")
    assert age_decrypt(got, server.passphrase("p.csv.age")) == data


def test_out_of_order_pipelined_writes(server, tmp_path):
    """A client with many writes in flight, sent out of order (within the window)."""
    data = plaintext(640 * 1024 + 123)
    block = 32 * 1024
    offsets = list(range(0, len(data), block))
    rng = random.Random(7)
    # shuffle within groups of 16 blocks: out of order, yet within the 8 MiB reorder window
    shuffled = [o for i in range(0, len(offsets), 16) for o in rng.sample(offsets[i:i + 16], len(offsets[i:i + 16]))]
    assert shuffled != offsets
    client = server.paramiko("agency")
    with client.open("/genk/ooo.csv", "wb") as handle:
        handle.set_pipelined(True)
        for offset in shuffled:
            handle.seek(offset)
            handle.write(data[offset:offset + block])
    assert client.stat("/genk/ooo.csv").st_size == len(data)  # the sender sees what it wrote
    client.close()
    got = download(server, "genk-clerk", "ooo.csv.age", tmp_path / "ooo.age")
    assert age_decrypt(got, server.passphrase("ooo.csv.age")) == data


def test_no_plaintext_on_disk_during_and_after_upload(server, tmp_path):
    data = plaintext(1024 * 1024)
    client = server.paramiko("agency")
    handle = client.open("/genk/scan.csv", "wb")
    handle.write(data[: len(data) // 2])
    handle.flush()
    time.sleep(0.3)
    assert (server.data_dir / "tmp").exists() and any((server.data_dir / "tmp").iterdir()), "upload not in progress"
    assert assert_no_plaintext(server.data_dir) >= 3
    handle.write(data[len(data) // 2:])
    handle.close()
    client.close()
    server.passphrase("scan.csv.age")
    assert assert_no_plaintext(server.data_dir) >= 3
    # and what is stored is exactly what the recorded hashes say
    app = server.app()
    row = app.db.query_one("SELECT * FROM deliveries WHERE name = 'scan.csv'")
    stored = (server.data_dir / "boxes" / row["blob_key"]).read_bytes()
    assert row["plain_sha256"] == hashlib.sha256(data).hexdigest()
    assert row["stored_sha256"] == age_stored_digest(stored)   # header and chunk tags (issue 12)
    assert row["stored_size"] == len(stored) and row["plain_size"] == len(data)
    audit = [r for r in app.audit.records() if r.event == "delivery.publish"][-1]
    assert audit.detail["plain_sha256"] == row["plain_sha256"]
    assert audit.detail["stored_sha256"] == row["stored_sha256"]


def test_sizes_each_side_sees(server, tmp_path):
    data = plaintext(100_000)
    (tmp_path / "s.csv").write_bytes(data)
    server.sftp("agency", f"put {tmp_path / 's.csv'} /genk/s.csv\n")
    sender = server.sftp("agency", "ls -l /genk\n").stdout
    recipient = server.sftp("genk-clerk", "ls -l\n").stdout
    assert " 100000 " in sender and "s.csv" in sender and "s.csv.age" not in sender
    stored = server.app().db.query_one("SELECT stored_size FROM deliveries WHERE name = 's.csv'")[0]
    assert f" {stored} " in recipient and "s.csv.age" in recipient and stored > 100_000


def test_zip_tenant_opens_with_7zip(make_server, tmp_path):
    seven = require_binary("7zz", "7z")
    server = make_server()
    server.add_tenant("leuven", fmt="zip")
    server.add_user("agency", "sender")
    server.add_user("leuven-clerk", "recipient", "leuven")
    server.start()
    data = plaintext(300_000)
    (tmp_path / "lijst leuven.csv").write_bytes(data)
    server.sftp("agency", f'put "{tmp_path / "lijst leuven.csv"}" "/leuven/lijst leuven.csv"\n')
    got = download(server, "leuven-clerk", '"lijst leuven.csv.zip"', tmp_path / "got.zip")
    passphrase = server.passphrase("lijst leuven.csv.zip")
    out = tmp_path / "out"
    result = subprocess.run([seven, "x", f"-p{passphrase}", f"-o{out}", str(got)], capture_output=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "lijst leuven.csv").read_bytes() == data
    listing = subprocess.run([seven, "l", "-slt", f"-p{passphrase}", str(got)], capture_output=True, text=True,
                             timeout=60).stdout
    assert "AES-256" in listing
    assert assert_no_plaintext(server.data_dir) >= 3


def test_empty_upload_refused(server, tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    result = server.sftp("agency", f"put {tmp_path / 'empty.csv'} /genk/empty.csv\n", check=False)
    assert result.returncode != 0  # OpenSSH reports the failed close (without the server's text)
    client = server.paramiko("agency")
    handle = client.open("/genk/empty2.csv", "wb")
    with pytest.raises(OSError) as refused:
        # paramiko's SFTPFile.close() swallows errors: ask for the close status directly
        client._request(CMD_CLOSE, handle.handle)
    handle._closed = True
    assert "empty upload refused" in str(refused.value)
    client.close()
    app = server.app()
    assert app.db.query("SELECT * FROM deliveries") == []
    abort = [r for r in app.audit.records() if r.event == "upload.abort"]
    assert abort and "empty" in abort[-1].detail["error"]
    assert not list((server.data_dir / "tmp").iterdir())
    assert "[sms" not in server.log


def test_write_too_far_ahead_is_refused_without_spilling(make_server):
    server = make_server({"upload": {"window": "256KiB"}}).standard().start()
    client = server.paramiko("agency")
    handle = client.open("/genk/far.csv", "wb")
    handle.write(MARKER * 100)
    handle.flush()
    handle.seek(4 * 1024 * 1024)
    with pytest.raises(OSError) as refused:
        handle.write(MARKER * 100)
        handle.flush()
    assert "ahead of the stream" in str(refused.value)
    assert_no_plaintext(server.data_dir)
    client.close()


def test_disk_full_mid_upload(make_server, tmp_path):
    """With the server's file size limit at 1 MiB, a 3 MiB upload fails cleanly: error to the
    client, partial file removed, nothing published, no key handed on."""
    server = make_server().standard()
    original = subprocess.Popen

    def limited(*args, **kwargs):
        kwargs["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        return original(*args, **kwargs)

    subprocess.Popen = limited  # only for this start: the server process gets the limit
    try:
        server.start()
    finally:
        subprocess.Popen = original
    (tmp_path / "big.csv").write_bytes(plaintext(3 * 1024 * 1024))
    result = server.sftp("agency", f"put {tmp_path / 'big.csv'} /genk/big.csv\n", check=False)
    assert result.returncode != 0
    app = server.app()
    aborts = wait_until(lambda: [r for r in app.audit.records() if r.event == "upload.abort"], "upload.abort")
    assert "no space" in aborts[-1].detail["error"]
    assert app.db.query("SELECT * FROM deliveries") == []
    assert app.db.query("SELECT * FROM outbox") == []
    assert not list((server.data_dir / "tmp").iterdir())
    assert "[sms" not in server.log


def test_crash_mid_upload_cleaned_at_next_start(server, tmp_path):
    client = server.paramiko("agency")
    handle = client.open("/genk/crash.csv", "wb")
    handle.write(plaintext(300_000))
    handle.flush()
    time.sleep(0.3)
    assert any((server.data_dir / "tmp").iterdir())
    server.stop(signal.SIGKILL)
    with contextlib.suppress(EOFError, OSError):  # the server is gone: closing may fail either way
        client.close()
    server.start()
    server.wait_for(r"removed 1 leftovers")
    app = server.app()
    aborts = [r for r in app.audit.records() if r.event == "upload.abort"]
    assert aborts and "interrupted" in aborts[-1].detail["reason"]
    assert not list((server.data_dir / "tmp").iterdir())
    assert app.db.query("SELECT * FROM deliveries") == []
    assert app.db.query("SELECT * FROM uploads") == []

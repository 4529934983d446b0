"""The basic journey: upload with OpenSSH sftp, SMS passphrase, download, open with our reader."""

from __future__ import annotations

import io
import os

from sluis.server.formats.age import decrypt


def test_upload_download_roundtrip(server, tmp_path):
    data = os.urandom(300_000)
    (tmp_path / "lijst.csv").write_bytes(data)
    server.sftp("agency", f"put {tmp_path / 'lijst.csv'} /genk/lijst.csv\n")
    listing = server.sftp("genk-clerk", "ls -l\n").stdout
    assert "lijst.csv.age" in listing
    server.sftp("genk-clerk", f"get lijst.csv.age {tmp_path / 'got.age'}\n")
    out = io.BytesIO()
    decrypt(open(tmp_path / "got.age", "rb"), out, server.passphrase("lijst.csv.age"))
    assert out.getvalue() == data

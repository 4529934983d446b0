"""sluis-upload, the agency's paramiko client: pinned host key, close status, size check."""

from __future__ import annotations

import subprocess
import sys


def run_upload(server, tmp_path, *files, fingerprint=None, tenant="genk"):
    account = server.accounts["agency"]
    return subprocess.run([sys.executable, "-m", "sluis.server.cli.upload", tenant, *map(str, files),
                           "--host", "127.0.0.1", "--port", str(server.port), "--user", "agency",
                           "--key", str(account.key),
                           "--host-key-fingerprint", fingerprint or server.host_key_fingerprint()],
                          capture_output=True, text=True, timeout=60)


def test_upload_reports_success_and_size(server, tmp_path):
    (tmp_path / "lijst.csv").write_bytes(b"naam;voornaam\n" * 5000)
    result = run_upload(server, tmp_path, tmp_path / "lijst.csv")
    assert result.returncode == 0, result.stderr
    assert "uploaded" in result.stdout and "(70000 bytes)" in result.stdout
    assert server.app().db.query_one("SELECT plain_size FROM deliveries WHERE name = 'lijst.csv'")[0] == 70000


def test_wrong_host_key_refused(server, tmp_path):
    (tmp_path / "x.csv").write_bytes(b"data\n")
    result = run_upload(server, tmp_path, tmp_path / "x.csv",
                        fingerprint="SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert result.returncode != 0
    assert "does not match the pinned" in result.stderr
    assert server.app().db.query("SELECT * FROM deliveries") == []


def test_server_refusals_reach_the_script(server, tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    result = run_upload(server, tmp_path, tmp_path / "empty.csv")
    assert result.returncode == 1
    assert "empty upload refused" in result.stderr
    result = run_upload(server, tmp_path, tmp_path / "empty.csv", tenant="brugge")
    assert result.returncode == 1 and "no tenant named 'brugge'" in result.stderr

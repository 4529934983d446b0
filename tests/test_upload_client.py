"""sluis send's checks against a server with content = "any" (the default for existing setups):
stored size, a wrong host key, and the server's refusals on close reaching the script."""

from __future__ import annotations

import subprocess
import sys


def run_send(server, *files, fingerprint=None, tenant="genk", check=False):
    account = server.accounts["agency"]
    return subprocess.run([sys.executable, "-m", "sluis.server.cli.main", "send", "--to", tenant, *map(str, files),
                           "--server", f"127.0.0.1:{server.port}", "--user", "agency",
                           "--identity", str(account.key), *([] if check else ["--no-list-check"]),
                           "--host-key-fingerprint", fingerprint or server.host_key_fingerprint()],
                          capture_output=True, text=True, timeout=60)


def test_upload_reports_success_and_size(server, tmp_path):
    (tmp_path / "lijst.csv").write_bytes(b"naam;voornaam\n" * 5000)
    result = run_send(server, tmp_path / "lijst.csv")
    assert result.returncode == 0, result.stderr
    assert "SENT" in result.stdout and "70000 bytes" in result.stdout
    assert server.app().db.query_one("SELECT plain_size FROM deliveries WHERE name = 'lijst.csv'")[0] == 70000


def test_the_local_list_check_refuses_before_sending(server, tmp_path):
    (tmp_path / "lijst.csv").write_bytes(b"naam;voornaam\n" * 5000)
    result = run_send(server, tmp_path / "lijst.csv", check=True)
    assert result.returncode == 1 and "REFUSED" in result.stdout and "local check" in result.stdout
    assert server.app().db.query("SELECT * FROM uploads") == []
    assert server.app().db.query("SELECT * FROM deliveries") == []


def test_wrong_host_key_refused(server, tmp_path):
    (tmp_path / "x.csv").write_bytes(b"data\n")
    result = run_send(server, tmp_path / "x.csv", fingerprint="SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert result.returncode == 2
    assert "not the pinned" in result.stderr
    assert server.app().db.query("SELECT * FROM deliveries") == []


def test_server_refusals_reach_the_script(server, tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "x.csv").write_bytes(b"data\n")
    result = run_send(server, tmp_path / "empty.csv", tmp_path / "x.csv")
    assert result.returncode == 1
    assert "empty upload refused" in result.stdout
    assert "SENT" in result.stdout and server.app().db.query("SELECT name FROM deliveries")[0][0] == "x.csv"
    result = run_send(server, tmp_path / "x.csv", tenant="brugge")
    assert result.returncode == 1 and "no tenant named 'brugge'" in result.stdout

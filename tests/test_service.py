"""`sluis serve` as a process: clean stop on SIGTERM, nothing half-visible, state consistent."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys

from tests.support.waiting import wait_until


def test_sigterm_mid_upload_discards_it_and_exits_cleanly(server, tmp_path):
    client = server.paramiko("agency")
    handle = client.open("/genk/half.csv", "wb")
    handle.write(b"naam;voornaam\n" * 20000)
    handle.flush()
    wait_until(lambda: any((server.data_dir / "tmp").iterdir()), "the upload's temporary")
    assert server.stop(signal.SIGTERM) == 0
    with contextlib.suppress(EOFError, OSError):  # the server is gone: closing may fail either way
        client.close()
    assert "stopped" in server.log
    assert not list((server.data_dir / "tmp").iterdir())
    app = server.app()
    assert app.db.query("SELECT * FROM deliveries") == [] and app.db.query("SELECT * FROM uploads") == []
    aborts = [r for r in app.audit.records() if r.event == "upload.abort"]
    assert aborts and aborts[-1].detail["reason"].startswith("connection lost")
    assert app.audit.verify().ok
    integrity = app.db.query_one("PRAGMA integrity_check")[0]
    assert integrity == "ok"


def test_help_for_every_command():
    for args in (["--help"], ["serve", "--help"], ["tenant", "add", "--help"], ["audit", "verify", "--help"]):
        result = subprocess.run([sys.executable, "-m", "sluis.server.cli.main", *args], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0 and "usage:" in result.stdout


def test_restart_keeps_deliveries(server, tmp_path):
    (tmp_path / "a.csv").write_text("naam\n")
    server.sftp("agency", f"put {tmp_path / 'a.csv'} /genk/a.csv\n")
    server.stop()
    server.start()
    assert "a.csv.age" in server.sftp("genk-clerk", "ls\n").stdout


def test_console_sms_provider_is_announced_as_demo_only(server):
    """The console provider writes passphrases to the log: serve says so at every start."""
    server.wait_for(r'WARNING sluis: SMS provider "console" writes every passphrase to this log')

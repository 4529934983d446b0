"""`sluis serve` as a process: clean stop on SIGTERM, nothing half-visible, state consistent."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

from sluis.server.core.checkpoints import parse_checkpoint
from sluis.server.service import SHUTDOWN_GRACE_SECONDS
from tests.support.sms import twilio_server
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
    if app.db.dialect == "sqlite":   # PostgreSQL's WAL recovery has no file-level check to ask for
        integrity = app.db.query_one("PRAGMA integrity_check")[0]
        assert integrity == "ok"


def test_sigterm_waits_for_each_session_cleanup_before_the_database_closes(make_server, tmp_path):
    """SIGTERM with an upload whose key derivation is still running (scrypt 2^17, ~0.7 s here:
    aborting waits for it) and a download half read: the server exits within the bound, after
    both sessions cleaned up; the shutdown checkpoint covers their records (none came after it)."""
    server = make_server({"crypto": {"scrypt_log_n": 17}}).standard().start()
    (tmp_path / "list.csv").write_bytes(b"naam;voornaam\n" * 20000)
    server.sftp("agency", f"put {tmp_path / 'list.csv'} /genk/list.csv\n")
    server.passphrase("list.csv.age")   # published: the key message went out
    reader = server.paramiko("genk-clerk")
    download = reader.open("/list.csv.age", "rb")
    assert len(download.read(4096)) == 4096
    writer = server.paramiko("agency")
    upload = writer.open("/gent/second.csv", "wb")   # genk has a list waiting
    upload.write(b"naam;voornaam\n" * 100)
    wait_until(lambda: any((server.data_dir / "tmp").iterdir()), "the upload's temporary")
    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=SHUTDOWN_GRACE_SECONDS + 20) == 0
    elapsed = time.monotonic() - started
    for client in (reader, writer):
        with contextlib.suppress(EOFError, OSError):
            client.close()
    assert elapsed < SHUTDOWN_GRACE_SECONDS, f"the server took {elapsed:.1f}s to stop"
    assert "every connection ended and every session cleaned up" in server.log
    assert "still running after" not in server.log
    assert not list((server.data_dir / "tmp").iterdir())
    app = server.app()
    records = list(app.audit.records())
    [abort] = [r for r in records if r.event == "upload.abort"]
    assert abort.actor == "agency" and abort.detail["reason"].startswith("connection lost")
    [closed] = [r for r in records if r.event == "download.close"]
    assert closed.actor == "genk-clerk" and closed.detail["complete"] is False
    assert app.db.query("SELECT id FROM uploads") == []
    last = parse_checkpoint((server.data_dir / "audit.checkpoints").read_text().splitlines()[-1])
    assert last.reason == "shutdown" and last.seq == records[-1].seq, "records written after the last checkpoint"
    assert app.audit.verify().ok


def test_sigterm_mid_sms_call_waits_for_the_call_and_its_record(make_server, twilio, tmp_path):
    """SIGTERM cancels the outbox pass, whose thread runs on in the SMS call (the stand-in holds
    the answer 3 s): shutdown waits for it, bounded, so `key.sms.sent` comes before the shutdown
    checkpoint and before the database closes."""
    server = twilio_server(make_server, twilio, tenant="hasselt", phones=("+32470123456",),
                           crypto={"scrypt_log_n": 10})
    twilio.hold_next(1, seconds=3)
    server.start()
    (tmp_path / "lijst.csv").write_bytes(b"naam;voornaam\nJanssens;Maria\n")
    server.sftp("agency", f"put {tmp_path / 'lijst.csv'} /hasselt/lijst.csv\n")
    wait_until(lambda: twilio.held == 1, "an accepted SMS whose answer is held", 20)
    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=SHUTDOWN_GRACE_SECONDS + 20) == 0
    elapsed = time.monotonic() - started
    assert elapsed < SHUTDOWN_GRACE_SECONDS, f"the server took {elapsed:.1f}s to stop"
    assert "still running after" not in server.log
    records = list(server.app().audit.records())
    assert [r.detail["phone"] for r in records if r.event == "key.sms.sent"] == ["+32470123456"]
    last = parse_checkpoint((server.data_dir / "audit.checkpoints").read_text().splitlines()[-1])
    assert last.reason == "shutdown" and last.seq == records[-1].seq, "records written after the last checkpoint"
    assert server.app().audit.verify().ok


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

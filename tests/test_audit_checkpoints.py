"""The audit trail proves itself: a keyed chain nobody can rebuild without the audit key, records
in one canonical JSON form, and signed checkpoints outside the database that expose truncation
(the newest records, or all of them), a forged checkpoint, and a chain rewritten from scratch."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from contextlib import closing

from typing import Any

import pytest

from sluis.config import load_settings
from sluis.server.app import build_app
from sluis.server.core.audit import GENESIS, record_hash
from sluis.server.core.auditkey import AuditKey, PublicKey
from sluis.server.core.checkpoints import MAIL_LOCK, parse_checkpoint, sign_checkpoint
from tests.support.library import FAST, FakeClock, download, sluis, upload
from tests.support.smtp_standin import SmtpStandIn
from tests.support.waiting import wait_until
from tests.support.pg import both_engines, raw_db  # noqa: F401  (both engines)

COLUMNS = ("seq", "ts", "event", "actor", "tenant", "delivery", "source", "detail", "prev")


def db(server) -> Any:
    """An autocommit connection to the server's state database, SQLite or PostgreSQL."""
    return raw_db(server)


def verify(server, *args: str):
    return sluis(server.config, "audit", "verify", *args)


def checkpoint_lines(server) -> list[str]:
    path = server.data_dir / "audit.checkpoints"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def srv(make_server):
    """A setup with 70-odd audit records and a checkpoint of the head taken by the CLI."""
    server = make_server(FAST).standard()
    app = server.app()
    assert download(app, upload(app))
    for n in range(60):
        app.audit.record("test.event", actor="test", n=n)
    server.close()
    result = sluis(server.config, "audit", "checkpoint")
    assert result.returncode == 0, result.stdout + result.stderr
    return server


def head(server) -> tuple[int, str]:
    with closing(db(server)) as conn:
        row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return row[0], row[1]


def rebuild(server, key: AuditKey | None) -> None:
    """Recompute every hash and link as someone with write access to the database would."""
    with closing(db(server)) as conn:
        rows = [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")]
        prev = GENESIS
        for row in rows:
            digest = record_hash(row["seq"], row["ts"], row["event"], row["actor"], row["tenant"],
                                 row["delivery"], row["source"], json.loads(row["detail"]),
                                 prev, key)
            conn.execute("UPDATE audit SET prev = ?, hash = ? WHERE seq = ?", (prev, digest, row["seq"]))
            prev = digest


# --- keyed chain ------------------------------------------------------------------------------------
def test_checkpoint_and_verify_name_the_basis(srv):
    seq, digest = head(srv)
    [line] = checkpoint_lines(srv)
    checkpoint = parse_checkpoint(line)
    assert (checkpoint.seq, checkpoint.hash, checkpoint.reason) == (seq, digest, "manual")
    assert stat.S_IMODE(os.stat(srv.data_dir / "audit.checkpoints").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(srv.data_dir / "audit.key").st_mode) == 0o600
    result = verify(srv)
    assert result.returncode == 0, result.stdout
    assert f"checked {seq} records keyed (HMAC-SHA256) and 0 unkeyed" in result.stdout
    assert f"verified from checkpoint #{seq} of {checkpoint.time}" in result.stdout


@pytest.mark.parametrize("key", [None, AuditKey(os.urandom(32))], ids=["plain-sha256", "wrong-key"])
def test_chain_rebuilt_without_the_key_fails(srv, key):
    rebuild(srv, key)
    seq, _ = head(srv)
    result = verify(srv)
    assert result.returncode == 1
    assert "audit log BROKEN at record #1: content does not match its hash" in result.stdout
    # and the rebuilt head no longer matches the signed checkpoint
    assert f"record #{seq} differs from the checkpoint of it (rewritten)" in result.stdout


def test_duplicate_json_key_fails_although_its_last_value_hashes_right(srv):
    """Python keeps a duplicated key's last value, other readers its first: the stored text must be
    exactly the canonical form of what it parses to, so the ambiguous record fails."""
    with closing(db(srv)) as conn:
        row = conn.execute("SELECT seq, detail FROM audit WHERE event = 'user.add' ORDER BY seq LIMIT 1").fetchone()
        seq, detail = row["seq"], row["detail"]
        assert detail.endswith('"user":"agency"}')
        forged = detail.replace('"user":"agency"}', '"user":"mallory","user":"agency"}')
        assert json.loads(forged) == json.loads(detail)  # the old check saw no change
        conn.execute("UPDATE audit SET detail = ? WHERE seq = ?", (forged, seq))
    result = verify(srv)
    assert result.returncode == 1
    assert f"audit log BROKEN at record #{seq}: detail is not canonical JSON: duplicate key 'user'" in result.stdout


def test_non_canonical_spacing_fails(srv):
    with closing(db(srv)) as conn:
        detail = conn.execute("SELECT detail FROM audit WHERE seq = 3").fetchone()[0]
        conn.execute("UPDATE audit SET detail = ? WHERE seq = 3", (detail.replace(":", ": ", 1),))
    result = verify(srv)
    assert result.returncode == 1
    assert "BROKEN at record #3: detail is not canonical JSON: not in canonical form" in result.stdout


# --- truncation against checkpoints ------------------------------------------------------------------
def test_deleting_the_last_50_records_is_reported(srv):
    seq, _ = head(srv)
    checkpoint = parse_checkpoint(checkpoint_lines(srv)[0])
    with closing(db(srv)) as conn:
        conn.execute("DELETE FROM audit WHERE seq > ?", (seq - 50,))
    result = verify(srv)
    assert result.returncode == 1, result.stdout
    assert "audit log intact" in result.stdout          # what is left links up fine ...
    assert (f"checkpoint FAILED: records #{seq - 49}..#{seq} are missing (the newest records were deleted);"
            f" checkpoint #{seq} of {checkpoint.time}") in result.stdout   # ... but the checkpoint saw more
    # the finding is recorded for the incidents part, once however often verify runs
    assert verify(srv).returncode == 1
    with closing(db(srv)) as conn:
        broken = conn.execute("SELECT * FROM audit WHERE event = 'audit.broken'").fetchall()
    assert len(broken) == 1 and broken[0]["actor"].startswith("admin:")
    assert json.loads(broken[0]["detail"]) == {
        "seq": seq, "reason": f"records #{seq - 49}..#{seq} are missing (the newest records were deleted)"}


def test_deleting_every_record_is_reported(srv):
    seq, _ = head(srv)
    with closing(db(srv)) as conn:
        conn.execute("DELETE FROM audit")
    result = verify(srv)
    assert result.returncode == 1, result.stdout
    assert f"every record is missing (the audit table is empty); the checkpoint saw records up to #{seq}" \
        in result.stdout


def test_checkpoint_from_a_mail_catches_truncation_when_the_file_is_gone_too(srv):
    seq, _ = head(srv)
    [line] = checkpoint_lines(srv)
    public = sluis(srv.config, "audit", "public-key").stdout.strip()
    (srv.data_dir / "audit.checkpoints").unlink()
    with closing(db(srv)) as conn:
        conn.execute("DELETE FROM audit WHERE seq > ?", (seq - 50,))
    quoted = f"Nov 30 12:00:00 host sluis[42]: INFO sluis.audit: audit checkpoint: {line}"
    result = verify(srv, "--checkpoint", quoted, "--public-key", public)
    assert result.returncode == 1
    assert f"records #{seq - 49}..#{seq} are missing" in result.stdout and "--checkpoint 1" in result.stdout
    without = verify(srv)
    assert without.returncode == 0 and "no checkpoint to verify against" in without.stdout


def test_forged_checkpoint_lines_fail_their_signature(srv):
    seq, _ = head(srv)
    [line] = checkpoint_lines(srv)
    with closing(db(srv)) as conn:
        earlier = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq - 5,)).fetchone()[0]
    good = parse_checkpoint(line)
    altered = line.replace(f"seq={seq} hash={good.hash}", f"seq={seq - 5} hash={earlier}")
    result = verify(srv, "--checkpoint", altered)
    assert result.returncode == 1
    assert f"--checkpoint 1: checkpoint of #{seq - 5}: signature does not verify (forged or altered)" in result.stdout
    other = sign_checkpoint(AuditKey(os.urandom(32)), seq + 10, "a" * 64, good.time, "interval")
    result = verify(srv, "--checkpoint", other.line)
    assert result.returncode == 1 and "signed by another key" in result.stdout
    # an honest line given by hand verifies
    assert verify(srv, "--checkpoint", line, "--no-file").returncode == 0


# --- checkpointing in serve: refuses to sign over a broken chain; prune; mail ---------------------------
def test_checkpoint_refuses_a_truncated_chain_and_records_audit_broken(lib, caplog):
    server, app, _clock = lib
    first = app.checkpoints.checkpoint("interval")
    assert first is not None
    for n in range(5):
        app.audit.record("test.event", actor="test", n=n)
    second = app.checkpoints.checkpoint("interval")
    assert second is not None and second.seq == first.seq + 5  # the five records, and nothing else
    with app.db.writer() as tx:
        tx.execute("DELETE FROM audit WHERE seq > ?", (second.seq - 3,))
    with caplog.at_level(logging.ERROR, logger="sluis.audit"):
        assert app.checkpoints.checkpoint("interval") is None
        assert app.checkpoints.checkpoint("interval") is None
    assert any(r.levelno == logging.ERROR and "audit chain BROKEN" in r.getMessage() for r in caplog.records)
    broken = [r for r in app.audit.records() if r.event == "audit.broken"]
    assert len(broken) == 1, "one record per finding, not one per interval"
    assert broken[0].detail == {"seq": second.seq,
                                "reason": f"records #{second.seq - 2}..#{second.seq} are missing (truncated): "
                                          f"the checkpoint of #{second.seq} saw them"}
    assert len(checkpoint_lines(server)) == 2  # nothing signed over the cut
    result = sluis(server.config, "audit", "checkpoint")
    assert result.returncode == 1 and "no checkpoint signed" in result.stdout


def test_checkpoint_refuses_an_edited_record_since_the_last_one(lib):
    _server, app, _clock = lib
    first = app.checkpoints.checkpoint("interval")
    app.audit.record("test.event", actor="test")
    with app.db.writer() as tx:
        tx.execute("UPDATE audit SET actor = 'someone else' WHERE seq = ?", (first.seq + 1,))
    assert app.checkpoints.checkpoint("interval") is None
    [broken] = [r for r in app.audit.records() if r.event == "audit.broken"]
    assert broken.detail["seq"] == first.seq + 1 and "does not match its hash" in broken.detail["reason"]


def test_pruning_keeps_older_checkpoints_valid(lib):
    server, app, clock = lib
    old = app.checkpoints.checkpoint("interval")
    for n in range(3):
        app.audit.record("test.event", actor="test", n=n)   # the pruned range runs past the checkpoint
    clock.advance(days=6 * 365)
    upload(app)
    assert app.janitor.run_once().audit_pruned == old.seq + 3
    assert app.db.query_one("SELECT 1 FROM audit WHERE seq = ?", (old.seq,)) is None
    new = app.checkpoints.checkpoint("interval")     # verifies from the pruned checkpoint on
    assert new is not None and new.seq > old.seq
    result = verify(server)
    assert result.returncode == 0, result.stdout
    assert f"verified from checkpoint #{new.seq}" in result.stdout and "2 checkpoints" in result.stdout


def operator_mail(smtp: SmtpStandIn) -> dict:
    """[email] through the SMTP stand-in, with an operator to mail checkpoints to."""
    return {"enabled": True, "host": smtp.host, "port": smtp.port, "starttls": False,
            "sender": "sluis@integratie.example", "operator": "ops@integratie.example"}


def test_checkpoint_is_mailed_once_a_day(make_server):
    with SmtpStandIn() as smtp:
        email = operator_mail(smtp)
        server = make_server({**FAST, "email": email}).standard()
        clock = FakeClock()
        app = build_app(load_settings(server.config, {}), clock=clock)
        try:
            first = app.checkpoints.checkpoint("interval")
            assert app.checkpoints.mail_if_due(first)
            [mail] = smtp.wait_for_messages(1)
            second = app.checkpoints.checkpoint("interval")
            clock.advance(hours=23)
            assert not app.checkpoints.mail_if_due(second)
            clock.advance(hours=2)
            third = app.checkpoints.checkpoint("interval")
            assert app.checkpoints.mail_if_due(third)
            smtp.wait_for_messages(2)
        finally:
            app.close()
    assert mail.rcpt_tos == ("ops@integratie.example",)
    assert f"sluis audit checkpoint #{first.seq}" == mail.message["Subject"]
    assert first.line in mail.body
    public = PublicKey.parse(re.search(r"--public-key (\S+)", mail.body).group(1))
    assert parse_checkpoint(first.line).problem(public) is None



def test_one_daily_mail_per_setup_while_another_process_mails(make_server):
    """Nodes share the database: while one holds the mail lock (checking, sending, recording),
    another's due mail is left to it; once it has recorded the mail, the day's mail is sent."""
    with SmtpStandIn() as smtp:
        email = operator_mail(smtp)
        server = make_server({**FAST, "email": email}).standard()
        clock = FakeClock()
        node_a = build_app(load_settings(server.config, {}), clock=clock)
        node_b = build_app(load_settings(server.config, {}), clock=clock)
        try:
            checkpoint = node_b.checkpoints.checkpoint("interval")
            with node_a.db.try_lock(MAIL_LOCK) as held:      # node a is mailing right now
                assert held
                assert not node_b.checkpoints.mail_if_due(checkpoint)
            assert node_a.checkpoints.mail_if_due(checkpoint)
            assert not node_b.checkpoints.mail_if_due(checkpoint)  # recorded by a: not again today
            smtp.wait_for_messages(1)
        finally:
            node_a.close()
            node_b.close()
        assert len(smtp.messages) == 1


# --- a real serve process: at start, every interval, on SIGTERM, and the daily mail ----------------------
def test_serve_writes_checkpoints_hourly_and_on_sigterm_and_mails_one(make_server):
    with SmtpStandIn() as smtp:
        email = operator_mail(smtp)
        server = make_server({**FAST, "email": email, "audit": {"checkpoint_interval": "1s"}}).standard()
        server.start()
        [mail] = smtp.wait_for_messages(1, timeout=20)
        reasons = lambda: [parse_checkpoint(line).reason for line in checkpoint_lines(server)]  # noqa: E731
        wait_until(lambda: reasons().count("interval") >= 2, "two interval checkpoints", 20)
        server.sftp("agency", "ls\n")
        assert server.stop() == 0
    lines = checkpoint_lines(server)
    assert parse_checkpoint(lines[0]).reason == "start"
    [mailed] = [line for line in lines if line in mail.body]
    assert parse_checkpoint(mailed).reason == "interval"
    assert len(smtp.messages) == 1, "one mail a day, not one per checkpoint"
    last = parse_checkpoint(lines[-1])
    assert last.reason == "shutdown"
    assert (last.seq, last.hash) == head(server)     # the very last record of the run is covered
    assert f"audit checkpoint: {lines[-1]}" in server.log   # the journal copy
    assert verify(server).returncode == 0

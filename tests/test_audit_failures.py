"""Nothing proceeds unrecorded: when the audit write fails (a real SQLite failure, injected with a
trigger as a full disk would), the operation it records is refused; and the upgrade of a setup
from before the audit key."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from contextlib import closing

from typing import Any

import pytest

from sluis.server.core.store import Conflict
from sluis.server.core.audit import GENESIS, record_hash
from tests.support.library import FAST, download, has_secret, sluis, state_of, upload
from tests.support.pg import both_engines, fail_audit_inserts, heal_audit_inserts, raw_db  # noqa: F401  (both engines)


def db(server) -> Any:
    """An autocommit connection to the server's state database, SQLite or PostgreSQL."""
    return raw_db(server)


def fail_audit(server, event: str) -> None:
    fail_audit_inserts(server, event)


def heal(server) -> None:
    heal_audit_inserts(server)


def events(server) -> list[str]:
    with closing(db(server)) as conn:
        return [r[0] for r in conn.execute("SELECT event FROM audit ORDER BY seq")]


def test_download_refused_when_its_record_cannot_be_written(server, tmp_path):
    (tmp_path / "lijst.csv").write_bytes(b"naam;adres\n" * 1000)
    server.sftp("agency", f"put {tmp_path / 'lijst.csv'} /genk/lijst.csv\n")
    fail_audit(server, "download.open")
    got = tmp_path / "got.age"
    result = server.sftp("genk-clerk", f"get lijst.csv.age {got}\n", check=False)
    assert result.returncode != 0
    assert not got.exists() or got.stat().st_size == 0, "bytes left without a download.open record"
    assert "download.open" not in events(server) and "download.close" not in events(server)
    with closing(db(server)) as conn:
        assert conn.execute("SELECT state FROM deliveries").fetchone()[0] == "published"
    heal(server)
    server.sftp("genk-clerk", f"get lijst.csv.age {got}\n")
    assert got.read_bytes().startswith(b"age-encryption.org/v1")
    assert "download.open" in events(server)


def test_upload_not_published_when_its_record_cannot_be_written(server, tmp_path):
    (tmp_path / "lijst.csv").write_bytes(b"naam;adres\nA;B\n")
    fail_audit(server, "delivery.publish")
    result = server.sftp("agency", f"put {tmp_path / 'lijst.csv'} /genk/lijst.csv\n", check=False)
    assert result.returncode != 0, result.stdout
    with closing(db(server)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 0
    assert not [p for p in (server.data_dir / "boxes").rglob("*") if p.is_file()], "a blob was published"
    assert "upload.abort" in events(server)
    listing = server.sftp("genk-clerk", "ls\n").stdout
    assert "lijst.csv" not in listing


def test_orphan_sweep_removes_nothing_it_cannot_record(lib):
    server, app, _clock = lib
    orphan = server.data_dir / "boxes" / "genk" / "d-orphan"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x")
    fail_audit(server, "storage.orphan.remove")
    with pytest.raises(Conflict, match="disk is full"):
        app.dropbox.sweep_orphans()
    assert orphan.exists(), "the orphan was removed without a record"
    heal(server)
    assert app.dropbox.sweep_orphans() == 1 and not orphan.exists()
    [record] = [r for r in app.audit.records() if r.event == "storage.orphan.remove"]
    assert record.detail == {"kind": "blob", "key": "genk/d-orphan"}


# --- upgrade from a chain without the audit key ------------------------------------------------------
def make_old_setup(make_server):
    """A setup as issue 8 found it: no audit.key, records hashed with plain SHA-256."""
    server = make_server(FAST).standard()
    server.close()
    (server.data_dir / "audit.key").unlink()
    with closing(db(server)) as conn:
        prev = GENESIS
        for row in [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")]:
            digest = record_hash(row["seq"], row["ts"], row["event"], row["actor"], row["tenant"],
                                 row["delivery"], row["source"], json.loads(row["detail"]), prev)
            conn.execute("UPDATE audit SET prev = ?, hash = ? WHERE seq = ?", (prev, digest, row["seq"]))
            prev = digest
        count = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    return server, count, prev


def test_upgrade_keys_the_chain_from_an_audit_rekey_record(make_server):
    server, count, old_head = make_old_setup(make_server)
    result = sluis(server.config, "audit", "verify")       # the first command after the upgrade
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"audit log intact: {count + 1} records" in result.stdout
    assert f"checked 1 records keyed (HMAC-SHA256) and {count} unkeyed" in result.stdout
    key = server.data_dir / "audit.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and key.stat().st_size == 32
    with closing(db(server)) as conn:
        rekey = conn.execute("SELECT * FROM audit WHERE event = 'audit.rekey'").fetchone()
    assert rekey["seq"] == count + 1 and rekey["prev"] == old_head
    assert json.loads(rekey["detail"])["unkeyed_through"] == count
    # later records are keyed; a second process adds no second rekey
    assert sluis(server.config, "audit", "checkpoint").returncode == 0
    assert sluis(server.config, "tenant", "add", "hasselt", "--phone", "+32470999999").returncode == 0
    result = sluis(server.config, "audit", "verify")
    assert result.returncode == 0 and f"checked 2 records keyed (HMAC-SHA256) and {count} unkeyed" in result.stdout
    assert events(server).count("audit.rekey") == 1
    # the unkeyed part is still protected by its hashes and by the keyed rekey record after it
    with closing(db(server)) as conn:
        conn.execute("UPDATE audit SET actor = 'someone' WHERE seq = 2")
    result = sluis(server.config, "audit", "verify")
    assert result.returncode == 1 and "BROKEN at record #2" in result.stdout


def test_a_lost_key_on_a_keyed_chain_is_refused_not_replaced(make_server):
    server = make_server(FAST).standard()
    server.close()
    (server.data_dir / "audit.key").unlink()
    result = sluis(server.config, "audit", "verify")
    assert result.returncode == 1
    assert "is missing but the audit chain is keyed: restore the key file" in result.stderr
    assert not (server.data_dir / "audit.key").exists()


def test_a_key_present_does_not_adopt_a_chain_rebuilt_without_it(make_server):
    """Rebuilding everything as plain SHA-256 and keeping the key must not pass as an old chain."""
    server, count, _ = make_old_setup(make_server)
    (server.data_dir / "audit.key").write_bytes(os.urandom(32))
    os.chmod(server.data_dir / "audit.key", 0o600)
    result = sluis(server.config, "audit", "verify")
    assert result.returncode == 1 and "BROKEN at record #1: content does not match its hash" in result.stdout
    assert "audit.rekey" not in events(server)


def test_systemd_credential_wins_over_the_key_file(make_server, tmp_path):
    server = make_server(FAST)
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / "sluis-audit-key").write_bytes((server.data_dir / "audit.key").read_bytes())
    os.chmod(creds / "sluis-audit-key", 0o400)
    (server.data_dir / "audit.key").rename(tmp_path / "moved.key")
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    result = subprocess.run([sys.executable, "-m", "sluis.server.cli.main", "-c", str(server.config), "audit",
                             "verify"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (server.data_dir / "audit.key").exists()


def test_key_destruction_is_recorded_or_does_not_happen(lib):
    server, app, _clock = lib
    delivery = upload(app)
    with app.db.writer() as tx:   # the SMS went out: nothing needs the key once collected
        tx.execute("UPDATE outbox SET state = 'delivered' WHERE delivery_id = ?", (delivery.id,))
    fail_audit(server, "key.destroy")
    with pytest.raises(Conflict, match="disk is full"):
        download(app, delivery)
    assert has_secret(app, delivery) and state_of(app, delivery).state == "published"
    heal(server)
    assert download(app, delivery)
    assert not has_secret(app, delivery)
    [record] = [r for r in app.audit.records() if r.event == "key.destroy"]
    assert record.delivery == delivery.id and record.detail["state"] == "collected"

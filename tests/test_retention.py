"""Retention: collected files leave after the grace period, uncollected ones expire, recipients may
delete earlier, key material goes with the file, and `sluis janitor run` says what it removed.

Time-dependent rules run against the library with a fake clock; the end-to-end cases use real
OpenSSH sftp clients against `sluis serve` and the `sluis` CLI.
"""

from __future__ import annotations

import json
import time


from sluis.keydelivery.outbox import ALERT, CANCELLED, PENDING, SMS
from sluis.server.core.deliveries import COLLECTED, PUBLISHED, REMOVED, fetch
from sluis.server.core.session import Session
from tests.support.library import (
    FAST, blob_path, download, has_secret, remove_records, sluis, state_of, upload,
)
from tests.support.pg import both_engines  # noqa: F401  (these tests run on both engines)

# --- collected, then removed after the grace period ------------------------------------------------
def test_collected_file_is_removed_after_grace(lib):
    srv, app, clock = lib
    delivery = upload(app)
    assert blob_path(srv, delivery).is_file()
    assert has_secret(app, delivery)
    clock.advance(hours=1)
    assert download(app, delivery) is True
    assert state_of(app, delivery).state == COLLECTED

    clock.advance(hours=23, minutes=59)          # grace (24h) not yet over
    report = app.janitor.run_once()
    assert report.removed_collected == []
    assert state_of(app, delivery).state == COLLECTED
    assert blob_path(srv, delivery).is_file()

    clock.advance(minutes=2)
    report = app.janitor.run_once()
    assert report.removed_collected == [delivery.id]
    after = state_of(app, delivery)
    assert (after.state, after.removed_reason) == (REMOVED, "collected")
    assert not blob_path(srv, delivery).exists()
    assert not has_secret(app, delivery)
    records = remove_records(app, delivery)
    assert len(records) == 1 and records[0]["reason"] == "collected"
    # a second pass does not remove (or record) it again
    assert app.janitor.run_once().removed_collected == []
    assert len(remove_records(app, delivery)) == 1
    assert app.audit.verify().ok


def test_partly_read_file_is_neither_collected_nor_removed(lib):
    srv, app, clock = lib
    delivery = upload(app, data=b"x" * 50_000)
    assert download(app, delivery, fraction=0.5) is False
    assert state_of(app, delivery).state == PUBLISHED
    assert state_of(app, delivery).collected_at is None
    clock.advance(days=2)                        # well past the grace period, before expiry
    report = app.janitor.run_once()
    assert report.removed_collected == [] and report.expired == []
    assert state_of(app, delivery).state == PUBLISHED
    assert blob_path(srv, delivery).is_file()
    assert has_secret(app, delivery)
    assert remove_records(app, delivery) == []


def test_uncollected_file_expires_and_sender_is_alerted(lib):
    srv, app, clock = lib
    delivery = upload(app)
    clock.advance(days=29, hours=23)
    assert app.janitor.run_once().expired == []
    assert state_of(app, delivery).state == PUBLISHED

    clock.advance(hours=1, seconds=1)            # 30 days after upload
    report = app.janitor.run_once()
    assert report.expired == [delivery.id]
    after = state_of(app, delivery)
    assert (after.state, after.removed_reason) == (REMOVED, "expired")
    assert not blob_path(srv, delivery).exists()
    assert not has_secret(app, delivery)
    records = remove_records(app, delivery)
    assert len(records) == 1 and records[0]["reason"] == "expired"
    alerts = [j for j in app.outbox.jobs(delivery.id) if j.kind == ALERT]
    assert len(alerts) == 1
    assert alerts[0].state == PENDING
    assert alerts[0].payload["sender"] == "agency"
    assert "expired" in alerts[0].payload["reason"]
    # the SMS that had not gone out yet is cancelled: the key it carries no longer opens anything
    sms = [j for j in app.outbox.jobs(delivery.id) if j.kind == SMS]
    assert sms and all(j.state == CANCELLED for j in sms)


def test_collected_file_does_not_expire_as_uncollected(lib):
    _srv, app, clock = lib
    delivery = upload(app)
    clock.advance(days=29, hours=23, minutes=30)
    assert download(app, delivery)
    clock.advance(hours=1)                       # past expires_at, but it was collected
    report = app.janitor.run_once()
    assert report.expired == []
    assert state_of(app, delivery).state == COLLECTED
    assert not [j for j in app.outbox.jobs(delivery.id) if j.kind == ALERT]


def test_recipient_delete_goes_through_the_remove_path(lib):
    srv, app, _clock = lib
    delivery = upload(app)
    session = Session(user=app.directory.user("genk-clerk"), source="test")
    assert app.dropbox.remove(state_of(app, delivery), "deleted", actor=session.actor, source="test")
    after = state_of(app, delivery)
    assert (after.state, after.removed_reason) == (REMOVED, "deleted")
    assert not blob_path(srv, delivery).exists()
    assert not has_secret(app, delivery)
    assert all(j.state == CANCELLED for j in app.outbox.jobs(delivery.id) if j.kind == SMS)
    # removing twice is a no-op, not a second record
    assert app.dropbox.remove(after, "deleted", actor="genk-clerk") is False
    assert [r["reason"] for r in remove_records(app, delivery)] == ["deleted"]
    assert app.dropbox.recipient_files(session) == []


def test_orphan_blobs_are_swept(lib):
    srv, app, _clock = lib
    delivery = upload(app)
    orphan = srv.data_dir / "boxes" / delivery.blob_key.split("/")[0] / "d-orphan"
    orphan.write_bytes(b"left behind")
    report = app.janitor.run_once()
    assert report.orphans == 1
    assert not orphan.exists()
    assert blob_path(srv, delivery).is_file()   # the live blob stays
    assert any(r.event == "storage.orphan.remove" and r.detail["key"].endswith("d-orphan")
               for r in app.audit.records())


def test_key_destroyed_once_collected_and_sms_done(lib):
    _srv, app, clock = lib
    delivery = upload(app)
    assert download(app, delivery)
    assert has_secret(app, delivery)             # the SMS is still pending: keep the key for it
    with app.db.writer() as tx:
        tx.execute("UPDATE outbox SET state = 'delivered' WHERE delivery_id = ?", (delivery.id,))
    report = app.janitor.run_once()
    assert report.keys_destroyed == 1
    assert not has_secret(app, delivery)
    assert state_of(app, delivery).state == COLLECTED   # the file itself waits for the grace period


# --- end to end: real clients and the CLI ----------------------------------------------------------
def test_janitor_cli_removes_collected_file_end_to_end(make_server, tmp_path):
    srv = make_server({"retention": {"collected_grace": "1s"}, **FAST}).standard().start()
    (tmp_path / "lijst.csv").write_bytes(b"a;b\n" * 1000)
    srv.sftp("agency", f"put {tmp_path / 'lijst.csv'} /genk/lijst.csv\n")
    srv.sftp("genk-clerk", f"get lijst.csv.age {tmp_path / 'got.age'}\n")
    app = srv.app()
    [delivery] = fetch(app.db, "1=1")
    assert delivery.state == COLLECTED
    assert blob_path(srv, delivery).is_file()
    time.sleep(1.2)
    result = sluis(srv.config, "janitor", "run")
    assert result.returncode == 0, result.stderr
    assert "removed 1 collected" in result.stdout
    assert f"removed (collected): {delivery.id}" in result.stdout
    assert not blob_path(srv, delivery).exists()
    after = state_of(app, delivery)
    assert (after.state, after.removed_reason) == (REMOVED, "collected")
    assert "lijst.csv.age" not in srv.sftp("genk-clerk", "ls -l\n").stdout
    # nothing left to do: a second run removes nothing
    again = sluis(srv.config, "janitor", "run")
    assert again.returncode == 0 and "removed 0 collected" in again.stdout
    assert "removed (collected)" not in again.stdout
    status = json.loads(sluis(srv.config, "status", "--all", "--json").stdout)
    assert [(d["id"], d["state"], d["removed"]) for d in status["deliveries"]] == \
        [(delivery.id, REMOVED, "collected")]


def test_janitor_cli_reports_expired(make_server):
    srv = make_server({"retention": {"expire_after": "1s"}, **FAST}).standard()
    app = srv.app()
    delivery = upload(app)
    time.sleep(1.1)
    result = sluis(srv.config, "janitor", "run")
    assert result.returncode == 0, result.stderr
    assert "expired 1" in result.stdout and f"expired: {delivery.id}" in result.stdout
    after = state_of(app, delivery)
    assert (after.state, after.removed_reason) == (REMOVED, "expired")


def test_recipient_deletes_with_sftp_rm(make_server, tmp_path):
    srv = make_server(FAST).standard().start()
    (tmp_path / "lijst.csv").write_bytes(b"a;b\n")
    srv.sftp("agency", f"put {tmp_path / 'lijst.csv'} /genk/lijst.csv\n")
    app = srv.app()
    [delivery] = fetch(app.db, "1=1")
    srv.sftp("genk-clerk", "rm lijst.csv.age\n")
    after = state_of(app, delivery)
    assert (after.state, after.removed_reason) == (REMOVED, "deleted")
    assert after.collected_at is None
    assert not blob_path(srv, delivery).exists()
    assert not has_secret(app, delivery)
    [record] = remove_records(app, delivery)
    assert record["reason"] == "deleted"
    assert "lijst.csv.age" not in srv.sftp("genk-clerk", "ls -l\n").stdout


def test_expiry_alert_also_goes_to_a_sender_with_an_address(lib):
    _srv, app, clock = lib
    with app.db.writer() as tx:
        tx.execute("UPDATE users SET email = 'batch@agentschap.test' WHERE name = 'agency'")
    delivery = upload(app)
    clock.advance(days=31)
    assert app.janitor.run_once().expired == [delivery.id]
    targets = sorted(j.target for j in app.outbox.jobs(delivery.id) if j.kind == ALERT)
    assert targets == ["-", "batch@agentschap.test"]  # the operator (no address configured) and the sender

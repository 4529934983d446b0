"""sluis on an S3 bucket (moto's server): the core through the library (publish, the sweep's grace,
stale multipart uploads), then `sluis serve` end to end with OpenSSH sftp and `age`, and a kill
in the middle of an upload."""

from __future__ import annotations

import io
import signal

import pytest

from sluis.config import load_settings
from sluis.server.app import build_app
from sluis.server.core.coverage import Coverage
from sluis.server.core.deliveries import REMOVED
from sluis.server.core.s3storage import S3Storage
from sluis.server.core.session import Session
from sluis.server.core.dropsession import DropSession
from sluis.server.errors import LimitReached, NotFound, StorageUnavailable
from tests.support.clients import require_binary
from tests.support.library import FAST, FakeClock, download, sluis, state_of, upload
from tests.support.pty_age import run_age
from tests.support.waiting import wait_until

DATA = b"naam;adres\n" + b"".join(b"persoon %d;straat %d\n" % (i, i) for i in range(400_000))  # ~10 MiB


@pytest.fixture
def s3lib(make_server, bucket):
    """(server setup, app on a fake clock, clock, bucket) with [storage] backend = "s3"."""
    srv = make_server({**FAST, "storage": bucket.storage_settings(part_size="5MiB")}).standard()
    clock = FakeClock()
    app = build_app(load_settings(srv.config, {}), clock=clock)
    yield srv, app, clock, bucket
    app.close()


def test_publish_completes_the_upload_and_collection_keeps_the_object_for_the_grace(s3lib):
    srv, app, clock, bucket = s3lib
    assert isinstance(app.storage, S3Storage)
    session = Session(user=app.directory.user("agency"), source="test")
    up = app.dropbox.start_upload(session, "genk", "lijst.csv")
    up.write(0, DATA)
    key = bucket.prefix + f"{app.directory.tenant('genk').box_key}/{up.id}"
    assert bucket.multipart_uploads() == [key]         # chosen at upload start, kept with it
    assert bucket.objects() == []                      # nothing a recipient could see
    delivery = app.dropbox.publish(up)
    assert delivery.blob_key == key.removeprefix(bucket.prefix)
    assert bucket.objects() == [key] and bucket.multipart_uploads() == []
    assert len(bucket.get(key)) == delivery.stored_size
    assert not (srv.data_dir / "boxes").exists() and not (srv.data_dir / "tmp").exists()
    assert download(app, delivery)                     # collected ...
    app.janitor.run_once()
    assert bucket.objects() == [key]                   # ... the object stays for the grace
    clock.advance(seconds=app.settings.retention.collected_grace + 1)
    app.janitor.run_once()
    assert state_of(app, delivery).state == REMOVED
    assert bucket.objects() == []


def test_unreferenced_object_is_removed_only_after_the_grace(s3lib):
    _srv, app, clock, bucket = s3lib
    delivery = upload(app)
    live = bucket.prefix + delivery.blob_key
    orphan = bucket.prefix + delivery.blob_key.split("/")[0] + "/u-0rphan"
    bucket.client.put_object(Bucket=bucket.name, Key=orphan, Body=b"left by a crash before COMMIT")
    assert app.janitor.run_once().orphans == 0         # first seen: it may be a publish in flight
    clock.advance(seconds=app.settings.storage.orphan_grace - 1)
    assert app.janitor.run_once().orphans == 0
    assert bucket.objects() == sorted([live, orphan])
    clock.advance(seconds=2)
    assert app.janitor.run_once().orphans == 1
    assert bucket.objects() == [live]
    assert any(r.event == "storage.orphan.remove" and r.detail["key"].endswith("u-0rphan")
               for r in app.audit.records())


def test_stale_multipart_upload_is_aborted_and_a_live_one_kept(s3lib):
    _srv, app, _clock, bucket = s3lib
    box = app.directory.tenant("genk").box_key
    stale = bucket.prefix + f"{box}/u-5ca1e"
    bucket.client.create_multipart_upload(Bucket=bucket.name, Key=stale)   # a node died before its row
    session = Session(user=app.directory.user("agency"), source="test")
    live = app.dropbox.start_upload(session, "genk", "lijst.csv")
    live.write(0, DATA)
    assert app.janitor.run_once().orphans == 1
    assert bucket.multipart_uploads() == [bucket.prefix + f"{box}/{live.id}"]
    app.dropbox.publish(live)                          # the live one was not disturbed
    assert bucket.multipart_uploads() == []
    assert [r.detail["key"] for r in app.audit.records() if r.event == "storage.orphan.remove"] == ["u-5ca1e"]


def test_abort_leaves_nothing_in_the_bucket(s3lib):
    _srv, app, _clock, bucket = s3lib
    session = Session(user=app.directory.user("agency"), source="test")
    up = app.dropbox.start_upload(session, "genk", "lijst.csv")
    up.write(0, DATA)
    app.dropbox.abort(up, "test")
    assert bucket.multipart_uploads() == [] and bucket.objects() == []


def test_sftp_upload_collect_opens_with_age_on_s3(make_server, bucket, tmp_path):
    age = require_binary("age")
    server = make_server({"storage": bucket.storage_settings(part_size="5MiB")}).standard().start()
    source = tmp_path / "lijst.csv"
    source.write_bytes(DATA)
    server.sftp("agency", f"cd genk\nput {source}\n")
    passphrase = server.passphrase("lijst.csv.age")
    [key] = bucket.objects()
    assert bucket.multipart_uploads() == []
    target = tmp_path / "got.age"
    server.sftp("genk-clerk", f"get lijst.csv.age {target}\n")
    assert target.read_bytes() == bucket.get(key)
    run = run_age([age, "-d", str(target)], [passphrase], timeout=60)
    assert run.returncode == 0, run.terminal
    assert run.stdout == DATA
    row = server.app().db.query_one("SELECT state FROM deliveries")
    assert row["state"] == "collected"


def test_kill_mid_upload_leaves_nothing_visible_and_no_multipart_upload(make_server, bucket):
    server = make_server({"storage": bucket.storage_settings(part_size="5MiB")}).standard().start()
    with server.paramiko("agency") as client:
        handle = client.open("/genk/lijst.csv", "wb")
        handle.set_pipelined(True)
        for offset in range(0, 8 << 20, 1 << 20):
            handle.write(DATA[offset:offset + (1 << 20)])
        wait_until(bucket.uploaded_parts, "a part of the upload in the bucket", timeout=30)
        server.stop(signal.SIGKILL)
        assert bucket.multipart_uploads()              # cut off in the middle
    assert bucket.objects() == []                      # nothing partial is visible
    server.start()                                     # recovery aborts the dead upload
    janitor = sluis(server.config, "janitor", "run", env=server.env)
    assert janitor.returncode == 0, janitor.stderr
    assert bucket.multipart_uploads() == [] and bucket.objects() == []
    with server.paramiko("genk-clerk") as client:
        assert client.listdir("/") == []
    server.wait_for(r"leftovers of uploads interrupted")


def test_s3_backend_needs_a_bucket(make_server):
    srv = make_server()
    srv.config.write_text(srv.config.read_text().replace('backend = "local"', 'backend = "s3"', 1))
    result = sluis(srv.config, "status")
    assert result.returncode != 0
    assert "[storage] bucket: required with backend = 's3'" in result.stderr


def test_withdrawn_by_another_node_stops_an_open_download(s3lib):
    """Two processes on one state and one bucket: a handle open on one stops reading once the
    other withdraws the file (its reader looks every second), though 4 MiB are buffered ahead."""
    srv, app, _clock, _bucket = s3lib
    delivery = upload(app, data=DATA)
    session = Session(user=app.directory.user("genk-clerk"), source="test")
    handle = app.dropbox.open_download(session, delivery.stored_name, Coverage())
    assert len(handle.read(0, 32768)) == 32768
    other = build_app(load_settings(srv.config, {}))
    try:
        assert other.dropbox.remove(delivery, "withdrawn", actor="agency")
    finally:
        other.close()

    def refused() -> bool:
        try:
            handle.read(32768, 32768)
        except NotFound:
            return True
        return False

    wait_until(refused, "the open download to stop", timeout=5)
    app.dropbox.close_download(session, handle)


def test_a_store_that_refuses_fails_the_upload_and_publishes_nothing(s3lib):
    """The multipart upload disappears behind sluis's back (a store that lost it): the next part
    fails, the upload is refused with a clear error, and aborting it leaves no row, no object."""
    _srv, app, _clock, bucket = s3lib
    session = Session(user=app.directory.user("agency"), source="test")
    up = app.dropbox.start_upload(session, "genk", "lijst.csv")
    up.write(0, DATA[:6 << 20])                         # the first part is on its way
    [listed] = bucket.client.list_multipart_uploads(Bucket=bucket.name)["Uploads"]
    bucket.client.abort_multipart_upload(Bucket=bucket.name, Key=listed["Key"], UploadId=listed["UploadId"])
    with pytest.raises(StorageUnavailable, match="the file store is unavailable"):
        up.write(6 << 20, DATA[6 << 20:])
        app.dropbox.publish(up)
    app.dropbox.abort(up, "the store failed")
    assert bucket.objects() == [] and bucket.multipart_uploads() == []
    assert app.db.query("SELECT id FROM uploads") == [] and app.db.query("SELECT id FROM deliveries") == []


def test_a_missing_bucket_fails_the_upload_start_cleanly(make_server, bucket):
    srv = make_server({**FAST, "storage": {**bucket.storage_settings(), "bucket": "sluis-no-such-bucket"}}).standard()
    app = build_app(load_settings(srv.config, {}))
    try:
        session = Session(user=app.directory.user("agency"), source="test")
        with pytest.raises(StorageUnavailable, match="starting the upload"):
            app.dropbox.start_upload(session, "genk", "lijst.csv")
        assert app.db.query("SELECT id FROM uploads") == []
        [abort] = [r for r in app.audit.records() if r.event == "upload.abort"]
        assert abort.detail["reason"] == "failed to start"
    finally:
        app.close()


def test_part_size_must_cover_the_largest_upload(make_server):
    srv = make_server({"upload": {"max_file_size": "100GiB"}})
    text = srv.config.read_text().replace('backend = "local"', 'backend = "s3"', 1)
    srv.config.write_text(text.replace('bucket = ""', 'bucket = "sluis-prod"', 1))
    result = sluis(srv.config, "status")
    assert result.returncode != 0
    assert "[storage] part_size: an upload has at most 9990 parts" in result.stderr
    assert "at least 11MiB" in result.stderr


def test_s3_readers_are_capped_process_wide_with_a_clear_refusal(make_server, bucket):
    """Each open S3 download holds a reader thread: at most [limits] store_readers at once in the
    process, whatever the sessions; one more is refused (LimitReached, which the SFTP edge audits
    as `sftp.limit`) and succeeds once a reader has closed."""
    srv = make_server({**FAST, "storage": bucket.storage_settings(), "limits": {"store_readers": 2}}).standard()
    app = build_app(load_settings(srv.config, {}), clock=FakeClock())
    try:
        delivery = upload(app, data=DATA[:300_000])
        breaches: list[LimitReached] = []
        sessions = [DropSession(app.dropbox, Session(user=app.directory.user("genk-clerk"), source=f"s{i}"),
                                on_limit=breaches.append) for i in range(3)]
        first, second = (s.open_download(delivery.stored_name) for s in sessions[:2])
        with pytest.raises(LimitReached, match=r"at most 2\).*\[limits\] store_readers") as refused:
            sessions[2].open_download(delivery.stored_name)
        assert breaches == [refused.value] and refused.value.limit == "store_readers"
        sessions[0].close_download(first)

        def reopened():
            try:
                return sessions[2].open_download(delivery.stored_name)
            except LimitReached:
                return None
        third = wait_until(reopened, "a reader slot freed by the close", 10)
        assert sessions[2].read(third, 0, 10) is not None
        for session, handle in ((sessions[1], second), (sessions[2], third)):
            session.close_download(handle)
    finally:
        app.close()


def test_an_open_over_the_reader_cap_is_refused_over_sftp_and_audited(make_server, bucket):
    srv = make_server({**FAST, "storage": bucket.storage_settings(), "limits": {"store_readers": 1}}).standard().start()
    with srv.paramiko("agency") as client:
        client.putfo(io.BytesIO(DATA[:100_000]), "/genk/lijst.csv")
    with srv.paramiko("genk-clerk") as client:
        first = client.open("/lijst.csv.age", "rb")
        with pytest.raises(OSError, match=r"too many downloads from the file store .*store_readers"):
            client.open("/lijst.csv.age", "rb")
        first.close()
    [record] = wait_until(lambda: [r for r in srv.app().audit.records() if r.event == "sftp.limit"], "sftp.limit")
    assert record.detail["limit"] == "store_readers" and record.detail["allowed"] == 1

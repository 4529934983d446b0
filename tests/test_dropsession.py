"""The protocol-neutral drop session (server/core/dropsession.py, docs/dropsession.md), driven by a
stand-in front end with no SFTP: every transition of an upload and of a collection."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from sluis.config import load_settings
from sluis.server.app import build_app
from sluis.server.core.coverage import MAX_RANGES
from sluis.server.core.deliveries import COLLECTED, PUBLISHED, fetch
from sluis.server.core.dropsession import (
    CONNECTION_LOST, DELETED, INCOMPLETE, REFUSED_WRITE, REPLACED, SESSION_ENDED, WRITE_FAILED, UploadState,
)
from sluis.server.core.storage import LocalStorage
from sluis.server.errors import LimitReached, NotFound, PermissionDenied, StorageFull, UploadRejected
from tests.support.frontend import StandInFrontEnd
from tests.support.library import FAST, FakeClock
from tests.support.pg import both_engines  # noqa: F401  (these tests run on both engines)

DATA = os.urandom(100_000)    # several writes of 32 KiB


def run(coro) -> None:
    asyncio.run(coro)


def events(app, event: str) -> list:
    return [r for r in app.audit.records() if r.event == event]


def deliveries(app, tenant: str) -> list:
    return fetch(app.db, "tenant_id = ?", (app.directory.tenant(tenant).id,))


def nothing_left(app) -> bool:
    """No upload row and no temporary: an abort leaves nothing behind."""
    return app.db.query_one("SELECT id FROM uploads") is None and app.storage.temp_keys() == []


# --- uploads --------------------------------------------------------------------------------
def test_upload_publishes_on_close(lib) -> None:
    _, app, _ = lib
    sender = StandInFrontEnd(app, "agency")

    async def main() -> None:
        incoming = await sender.open_upload("genk", "lijst.csv")
        assert incoming.state == UploadState.RECEIVING and sender.drop.in_progress == 1
        # Out of order within the window: the second half first.
        await sender.write(incoming, 50_000, DATA[50_000:])
        await sender.write(incoming, 0, DATA[:50_000])
        assert incoming.size == len(DATA)
        await sender.close_upload(incoming)
        assert incoming.state == UploadState.PUBLISHED
        assert sender.drop.in_progress == 0 and sender.drop.upload_named("genk", "lijst.csv") is None

    run(main())
    [delivery] = deliveries(app, "genk")
    assert (delivery.name, delivery.state, delivery.plain_size) == ("lijst.csv", PUBLISHED, len(DATA))
    assert delivery.plain_sha256 == hashlib.sha256(DATA).hexdigest()
    [publish] = events(app, "delivery.publish")
    assert publish.delivery == delivery.id and publish.source == sender.session.source
    assert events(app, "upload.abort") == [] and nothing_left(app)


def test_reopen_replaces_the_upload_of_the_same_name(lib) -> None:
    _, app, _ = lib
    sender = StandInFrontEnd(app, "agency")

    async def main() -> None:
        first = await sender.open_upload("genk", "lijst.csv")
        await sender.write(first, 0, b"the first try, cut short")
        second = await sender.open_upload("genk", "lijst.csv")
        assert first.state == UploadState.ABORTED and first.aborted == REPLACED
        assert sender.drop.upload_named("genk", "lijst.csv") is second and sender.drop.in_progress == 1
        with pytest.raises(UploadRejected, match="nothing was published: replaced by a new upload"):
            await sender.close_upload(first)     # the client's late close of the old handle
        await sender.send(second, DATA)
        await sender.close_upload(second)
        assert second.state == UploadState.PUBLISHED

    run(main())
    [delivery] = deliveries(app, "genk")
    assert delivery.plain_sha256 == hashlib.sha256(DATA).hexdigest()
    [abort] = events(app, "upload.abort")
    assert abort.detail["reason"] == REPLACED and abort.detail["received"] == len(b"the first try, cut short")
    assert nothing_left(app)


def test_temporary_name_publishes_on_rename_only(lib) -> None:
    _, app, _ = lib
    sender = StandInFrontEnd(app, "agency")
    recipient = StandInFrontEnd(app, "genk-clerk")

    async def main() -> None:
        incoming = await sender.put("genk", "lijst.csv.filepart", DATA)
        assert incoming.state == UploadState.STAGED
        assert sender.drop.uploads_in("genk") == [incoming] and sender.drop.uploads_in("gent") == []
        assert deliveries(app, "genk") == []          # nothing visible before the rename
        with pytest.raises(NotFound):
            await recipient.open_download("lijst.csv.filepart.age")
        delivery = await sender.rename("genk", "lijst.csv.filepart", "lijst.csv")
        assert incoming.state == UploadState.PUBLISHED and sender.drop.in_progress == 0
        assert delivery.name == "lijst.csv" and delivery.plain_size == len(DATA)
        with pytest.raises(PermissionDenied, match="only a completed temporary upload"):
            await sender.rename("genk", "lijst.csv.filepart", "again.csv")   # it is gone

    run(main())
    [delivery] = deliveries(app, "genk")
    assert delivery.name == "lijst.csv" and delivery.plain_sha256 == hashlib.sha256(DATA).hexdigest()
    assert nothing_left(app)


def test_only_a_staged_upload_can_be_renamed(lib) -> None:
    _, app, _ = lib
    sender = StandInFrontEnd(app, "agency")
    opened = []

    async def main() -> None:
        receiving = await sender.open_upload("genk", "lijst.csv.filepart")
        opened.append(receiving)
        await sender.write(receiving, 0, DATA)
        with pytest.raises(PermissionDenied, match="only a completed temporary upload"):
            await sender.rename("genk", "lijst.csv.filepart", "lijst.csv")   # not closed yet
        assert receiving.state == UploadState.RECEIVING
        await sender.close_upload(receiving)
        assert receiving.state == UploadState.STAGED
        assert await sender.quit() == 1          # the session ends without the rename

    run(main())
    [receiving] = opened
    assert receiving.state == UploadState.ABORTED and receiving.aborted == SESSION_ENDED
    assert deliveries(app, "genk") == []
    [abort] = events(app, "upload.abort")
    assert abort.detail["reason"] == SESSION_ENDED and abort.detail["name"] == "lijst.csv.filepart"
    assert nothing_left(app)


def test_reopen_replaces_a_staged_upload(lib) -> None:
    _, app, _ = lib
    sender = StandInFrontEnd(app, "agency")

    async def main() -> None:
        staged = await sender.put("genk", "lijst.csv.filepart", b"old")
        retry = await sender.put("genk", "lijst.csv.filepart", DATA)
        assert staged.state == UploadState.ABORTED and staged.aborted == REPLACED
        assert retry.state == UploadState.STAGED
        await sender.rename("genk", "lijst.csv.filepart", "lijst.csv")

    run(main())
    [delivery] = deliveries(app, "genk")
    assert delivery.plain_size == len(DATA)
    assert [r.detail["reason"] for r in events(app, "upload.abort")] == [REPLACED]


def test_lost_connection_aborts_open_uploads(lib) -> None:
    _, app, _ = lib
    sender = StandInFrontEnd(app, "agency")

    async def main() -> None:
        open_one = await sender.open_upload("genk", "lijst.csv")
        await sender.send(open_one, DATA)            # every byte arrived, but no close came
        staged = await sender.put("gent", "lijst.csv.partial", DATA)
        await sender.disconnect()
        assert open_one.state == UploadState.ABORTED and open_one.aborted == CONNECTION_LOST
        assert staged.state == UploadState.ABORTED and staged.aborted == SESSION_ENDED
        assert sender.drop.in_progress == 0

    run(main())
    assert deliveries(app, "genk") == [] and deliveries(app, "gent") == []
    reasons = {r.detail["upload"]: r.detail["reason"] for r in events(app, "upload.abort")}
    assert sorted(reasons.values()) == sorted([CONNECTION_LOST, SESSION_ENDED])
    assert events(app, "delivery.publish") == [] and nothing_left(app)


def test_sender_deletes_an_upload_in_progress(lib) -> None:
    _, app, _ = lib
    sender = StandInFrontEnd(app, "agency")

    async def main() -> None:
        incoming = await sender.open_upload("genk", "lijst.csv")
        await sender.write(incoming, 0, DATA)
        await sender.delete_upload(incoming)
        assert incoming.state == UploadState.ABORTED and sender.drop.in_progress == 0
        with pytest.raises(UploadRejected, match="deleted by the sender"):
            await sender.close_upload(incoming)

    run(main())
    assert [r.detail["reason"] for r in events(app, "upload.abort")] == [DELETED]
    assert deliveries(app, "genk") == [] and nothing_left(app)


@pytest.fixture
def small_share(make_server):
    """An app whose sender may hold only 64 KiB of out-of-order writes ([upload] sender_window)."""
    srv = make_server({**FAST, "upload": {"sender_window": "64KiB"}}).standard()
    app = build_app(load_settings(srv.config, {}), clock=FakeClock())
    yield app
    app.close()


def test_refused_write_retried_publishes(small_share) -> None:
    app = small_share
    sender = StandInFrontEnd(app, "agency")
    ahead = DATA[30_000:]     # 70 000 bytes ahead of the stream: over the sender's 64 KiB share

    async def main() -> None:
        incoming = await sender.open_upload("genk", "lijst.csv")
        with pytest.raises(LimitReached):
            await sender.write(incoming, 30_000, ahead)
        assert [b.limit for b in sender.breaches] == ["sender_window"]
        assert incoming.refused == {(30_000, len(ahead))} and incoming.state == UploadState.RECEIVING
        await sender.write(incoming, 0, DATA[:30_000])
        await sender.write(incoming, 30_000, ahead)   # the same write again, now in order
        assert incoming.refused == set()
        await sender.close_upload(incoming)
        assert incoming.state == UploadState.PUBLISHED

    run(main())
    [delivery] = deliveries(app, "genk")
    assert delivery.plain_sha256 == hashlib.sha256(DATA).hexdigest()


def test_close_after_a_refused_write_publishes_nothing(small_share) -> None:
    app = small_share
    sender = StandInFrontEnd(app, "agency")

    async def main() -> None:
        incoming = await sender.open_upload("genk", "lijst.csv")
        await sender.write(incoming, 0, DATA[:30_000])
        with pytest.raises(LimitReached):
            await sender.write(incoming, 31_000, DATA[31_000:])
        await sender.write(incoming, 30_000, DATA[30_000:31_000])   # not the refused one
        with pytest.raises(UploadRejected, match=f"the write of {len(DATA) - 31_000} bytes at offset 31000"):
            await sender.close_upload(incoming)
        assert incoming.state == UploadState.ABORTED and incoming.aborted.startswith(REFUSED_WRITE + ": ")

    run(main())
    assert deliveries(app, "genk") == [] and nothing_left(app)
    [abort] = events(app, "upload.abort")
    assert abort.detail["reason"] == REFUSED_WRITE and "offset 31000" in abort.detail["error"]


class FillingDisk(LocalStorage):
    """Local storage whose temporaries take `room` bytes each, then fail as a full disk does."""

    def __init__(self, data_dir, room: int) -> None:
        super().__init__(data_dir)
        self.room = room

    def create_temp(self, temp_key: str, key: str):
        return _FillingTemp(super().create_temp(temp_key, key), self.room)


class _FillingTemp:
    def __init__(self, temp, room: int) -> None:
        self._temp = temp
        self._room = room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            raise StorageFull("no space left for the upload")
        self._room -= len(data)
        return self._temp.write(data)

    def __getattr__(self, name: str):
        return getattr(self._temp, name)


def _filling_app(make_server, room: int):
    srv = make_server(FAST).standard()
    settings = load_settings(srv.config, {})
    return build_app(settings, clock=FakeClock(), storage=FillingDisk(settings.data_dir, room))


def test_worker_failure_aborts_at_the_next_write(make_server) -> None:
    app = _filling_app(make_server, room=1 << 20)
    sender = StandInFrontEnd(app, "agency")
    chunk = os.urandom(65536)

    async def main() -> None:
        incoming = await sender.open_upload("genk", "lijst.csv")
        with pytest.raises(StorageFull):   # the worker's error surfaces within PER_UPLOAD + a batch
            for offset in range(0, 16 << 20, len(chunk)):
                await sender.write(incoming, offset, chunk)
        assert incoming.state == UploadState.ABORTED and incoming.aborted.startswith(WRITE_FAILED + ": ")
        assert sender.drop.in_progress == 0
        with pytest.raises(UploadRejected, match="nothing was published: write failed"):
            await sender.close_upload(incoming)

    try:
        run(main())
        assert deliveries(app, "genk") == [] and nothing_left(app)
        [abort] = events(app, "upload.abort")
        assert abort.detail["reason"] == WRITE_FAILED and "no space left" in abort.detail["error"]
    finally:
        app.close()


def test_worker_failure_at_close_aborts(make_server) -> None:
    app = _filling_app(make_server, room=10_000)
    sender = StandInFrontEnd(app, "agency")

    async def main() -> None:
        incoming = await sender.open_upload("genk", "lijst.csv")
        await sender.send(incoming, DATA)      # one batch: the worker meets the full disk at close
        with pytest.raises(StorageFull):
            await sender.close_upload(incoming)
        assert incoming.state == UploadState.ABORTED and incoming.aborted.startswith(INCOMPLETE + ": ")

    try:
        run(main())
        assert deliveries(app, "genk") == [] and nothing_left(app)
        assert [r.detail["reason"] for r in events(app, "upload.abort")] == [INCOMPLETE]
    finally:
        app.close()


# --- collection -----------------------------------------------------------------------------
def _published(app) -> object:
    sender = StandInFrontEnd(app, "agency")
    run(sender.put("genk", "lijst.csv", DATA))
    [delivery] = deliveries(app, "genk")
    return delivery


def test_full_read_collects(lib) -> None:
    _, app, _ = lib
    delivery = _published(app)
    recipient = StandInFrontEnd(app, "genk-clerk")
    size, half = delivery.stored_size, delivery.stored_size // 2

    async def main() -> None:
        # Any order, any block size, over two handles of one session.
        assert not await recipient.get(delivery.stored_name, [(half, size - half)])
        assert await recipient.get(delivery.stored_name, [(4096, half - 4096), (0, 4096)])

    run(main())
    [current] = fetch(app.db, "id = ?", (delivery.id,))
    assert current.state == COLLECTED and current.collected_by == "genk-clerk"
    assert current.collected_from == recipient.session.source
    [collect] = events(app, "delivery.collect")
    assert collect.delivery == delivery.id
    assert [r.detail["complete"] for r in events(app, "download.close")] == [False, True]


def test_partial_read_does_not_collect(lib) -> None:
    _, app, _ = lib
    delivery = _published(app)
    first, second = StandInFrontEnd(app, "genk-clerk"), StandInFrontEnd(app, "genk-clerk", "127.0.0.1:40001")
    size = delivery.stored_size

    async def main() -> None:
        assert not await first.get(delivery.stored_name, [(0, size - 1)])    # all but the last byte
        # Coverage belongs to a session: another session's last byte does not complete it.
        assert not await second.get(delivery.stored_name, [(size - 1, 1)])
        download = await first.open_download(delivery.stored_name)
        first.read(download, 0, 10)
        await first.disconnect()            # a lost connection closes the handle: still partial

    run(main())
    [current] = fetch(app.db, "id = ?", (delivery.id,))
    assert current.state == PUBLISHED and current.collected_at is None
    assert events(app, "delivery.collect") == []
    closes = events(app, "download.close")
    assert [r.detail["complete"] for r in closes] == [False, False, False]
    assert [r.detail["covered"] for r in closes] == [size - 1, 1, size - 1]


def test_scattered_reads_are_capped(lib) -> None:
    """One byte in two: the MAX_RANGES-th separate part is the last; the next scattered read is
    refused (and reported as a breach), reading on in order still works and collects."""
    _, app, _ = lib
    delivery = _published(app)
    recipient = StandInFrontEnd(app, "genk-clerk")

    async def main() -> None:
        download = await recipient.open_download(delivery.stored_name)
        for part in range(MAX_RANGES):
            assert recipient.read(download, 2 * part, 1) != b""
        with pytest.raises(LimitReached, match=f"at most {MAX_RANGES}; read the file in order"):
            recipient.read(download, 2 * MAX_RANGES, 1)
        assert [(b.limit, b.value, b.allowed) for b in recipient.breaches] == \
            [("coverage_ranges", MAX_RANGES + 1, MAX_RANGES)]
        recipient.read(download, 0, delivery.stored_size)    # one read over all: one range
        assert await recipient.close_download(download)

    run(main())
    [current] = fetch(app.db, "id = ?", (delivery.id,))
    assert current.state == COLLECTED
    [close] = events(app, "download.close")
    assert close.detail["bytes_sent"] == MAX_RANGES + delivery.stored_size   # not the refused byte


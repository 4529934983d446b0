"""The `Storage` contract, on both backends (local files, S3 on moto's server): a blob is invisible
until published, an abort leaves nothing, reads return the stored bytes at any offset, and an
open reader notices a removal. Then what only S3 has: bounded upload memory, one GET per stream."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import resource
import tracemalloc
from pathlib import Path

import pytest

from sluis.config.settings import StorageSettings
from sluis.server.core.s3storage import S3Storage
from sluis.server.core import storage as local_storage
from sluis.server.core.storage import PAGE, PREALLOCATE_STEP, TEMP_BUFFER, WRITEBACK_STEP, LocalStorage, start_writeback
from sluis.server.errors import NotFound, StorageUnavailable
from tests.support.moto import REGION, Bucket
from tests.support.waiting import wait_until

MiB = 1 << 20
PART = 5 * MiB          # S3's smallest part
KEY = "t000001/u-0123456789abcdef"
TEMP = "u-0123456789abcdef"
DATA = os.urandom(11 * MiB + 12345)   # three parts on S3, the last a short one


def s3_storage(bucket: Bucket, **extra) -> S3Storage:
    return S3Storage(StorageSettings(backend="s3", bucket=bucket.name, prefix=bucket.prefix,
                                     endpoint_url=bucket.moto.endpoint, region=REGION, part_size=PART, **extra))


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path: Path):
    if request.param == "local":
        return LocalStorage(tmp_path)
    return s3_storage(Bucket(request.getfixturevalue("moto_s3")))


def write_blob(storage, data: bytes = DATA, step: int = MiB, key: str = KEY, temp_key: str = TEMP):
    temp = storage.create_temp(temp_key, key)
    for offset in range(0, len(data), step):
        temp.write(data[offset:offset + step])
    temp.flush()
    return temp


def publish(storage, data: bytes = DATA, key: str = KEY, temp_key: str = TEMP) -> None:
    temp = write_blob(storage, data, key=key, temp_key=temp_key)
    temp.sync()
    temp.close()
    storage.publish(temp, key)


def read_all(reader, size: int, step: int = 32 * 1024) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = reader.read_at(len(out), step)
        assert chunk, "a read inside the blob returned nothing"
        out += chunk
    return bytes(out)


def test_blob_is_invisible_until_published(storage):
    temp = write_blob(storage)
    assert storage.keys() == []
    assert storage.temp_keys() == [TEMP]
    with pytest.raises(NotFound):
        storage.open_read(KEY)
    temp.sync()
    temp.close()
    assert storage.keys() == []             # durable, still not published
    storage.publish(temp, KEY)
    assert storage.keys() == [KEY]
    assert storage.temp_keys() == []
    assert storage.size(KEY) == len(DATA)
    reader = storage.open_read(KEY)
    try:
        assert read_all(reader, len(DATA)) == DATA
        assert reader.read_at(len(DATA), 100) == b""   # end of file
    finally:
        reader.close()


def test_discard_leaves_nothing(storage):
    temp = write_blob(storage)
    temp.close()
    assert storage.discard(TEMP) is True
    assert storage.temp_keys() == [] and storage.keys() == []
    assert storage.discard(TEMP) is False


def test_reads_at_any_offset(storage):
    publish(storage)
    reader = storage.open_read(KEY)
    try:
        for offset, size in [(0, 1000), (9 * MiB, 64 * 1024), (100, 5), (len(DATA) - 10, 100), (6 * MiB + 1, 1)]:
            assert reader.read_at(offset, size) == DATA[offset:offset + size]
    finally:
        reader.close()


def loop_download(reader) -> tuple[bytes, int]:
    """Read the blob as the SFTP edge does, on an event loop: `read_now` where the bytes are at
    hand, else await `read_async`. Returns the bytes and how often a ticker task ran meanwhile
    (it runs only while a read really waits without blocking the loop)."""

    async def download() -> tuple[bytes, int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        out = bytearray()
        while len(out) < len(DATA):
            chunk = reader.read_now(len(out), 32 * 1024)
            out += chunk if chunk is not None else await reader.read_async(len(out), 32 * 1024)
        stop.set()
        await task
        return bytes(out), ticks

    try:
        return asyncio.run(download())
    finally:
        reader.close()


def test_reads_on_an_event_loop(storage):
    publish(storage)
    data, _ticks = loop_download(storage.open_read(KEY))
    assert data == DATA


def test_delete_and_open_reader_notices(storage):
    publish(storage)
    reader = storage.open_read(KEY)
    try:
        assert reader.read_at(0, 10) == DATA[:10]
        assert not reader.removed()
        assert storage.delete(KEY) is True
        wait_until(reader.removed, "the open reader to notice the removal", timeout=5)
    finally:
        reader.close()
    assert storage.delete(KEY) is False
    assert storage.keys() == []
    with pytest.raises(NotFound):
        storage.open_read(KEY)


def test_create_temp_refuses_a_key_that_is_not_a_blob_key(storage):
    with pytest.raises(ValueError):
        storage.create_temp(TEMP, "../etc/u-0123456789abcdef")


# --- S3 only -------------------------------------------------------------------------------
def test_s3_upload_holds_at_most_two_parts(bucket):
    """40 MiB through a 5 MiB part size: the upload's own accounting and Python's allocations both
    stay near two parts (the one being filled, one in flight), not the file's size."""
    storage = s3_storage(bucket)
    chunk = os.urandom(MiB)
    temp = storage.create_temp(TEMP, KEY)
    tracemalloc.start()
    try:
        for _ in range(40):
            temp.write(chunk)
        temp.sync()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    temp.close()
    assert temp.peak <= 2 * PART
    assert peak < 4 * PART, f"the upload allocated {peak / MiB:.1f} MiB at its peak"
    assert bucket.objects() == []                      # nothing visible before publish
    storage.publish(temp, KEY)
    assert bucket.objects() == [bucket.prefix + KEY]
    assert bucket.get(bucket.prefix + KEY) == chunk * 40


def test_s3_download_streams_one_get_and_a_seek_restarts_it(bucket):
    storage = s3_storage(bucket)
    publish(storage)
    reader = storage.open_read(KEY)
    try:
        out = bytearray()
        while len(out) < len(DATA):       # as the SFTP edge reads: at once if buffered, else wait
            chunk = reader.read_now(len(out), 32 * 1024)
            out += chunk if chunk is not None else reader.read_at(len(out), 32 * 1024)
        assert bytes(out) == DATA
        assert reader.gets == 1           # one GET for ~350 reads, not a ranged GET per read
        assert reader.read_at(100, 50) == DATA[100:150]
        assert reader.gets == 2           # a seek back restarts the stream there
        assert reader.read_at(150, 50) == DATA[150:200]
        assert reader.gets == 2
    finally:
        reader.close()


def test_s3_publish_never_overwrites_another_blob(bucket):
    storage = s3_storage(bucket)
    publish(storage)
    other = write_blob(storage, b"other bytes", temp_key="u-1111111111111111", key=KEY.replace(TEMP, "u-1111111111111111"))
    other.sync()
    with pytest.raises(ValueError):       # a temporary publishes only under the key it was made for
        storage.publish(other, KEY)
    assert bucket.get(bucket.prefix + KEY) == DATA


def test_s3_reads_wait_without_blocking_the_loop(bucket):
    storage = s3_storage(bucket)
    publish(storage)
    data, ticks = loop_download(storage.open_read(KEY))
    assert data == DATA
    assert ticks > 0          # the stream had to be waited for, and the loop went on meanwhile


def test_s3_stream_cut_midway_goes_on_where_it_stopped(bucket):
    storage = s3_storage(bucket)
    publish(storage)
    reader = storage.open_read(KEY)
    try:
        assert reader.read_at(0, 1000) == DATA[:1000]
        reader._body.close()              # the connection drops in the middle of the GET
        assert read_all(reader, len(DATA)) == DATA
        assert reader.gets == 2           # one new GET, from where the first one stopped
    finally:
        reader.close()


class NoConditionalWrites:
    """A store without conditional writes (older Ceph RGW): If-None-Match gets 501 NotImplemented;
    everything else goes to moto."""

    def __init__(self, client) -> None:
        self._client = client
        self.refused = 0

    def complete_multipart_upload(self, **request):
        if "IfNoneMatch" in request:
            from botocore.exceptions import ClientError

            self.refused += 1
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "If-None-Match"}},
                              "CompleteMultipartUpload")
        return self._client.complete_multipart_upload(**request)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_s3_store_without_conditional_writes_still_publishes(bucket):
    plain = s3_storage(bucket)
    store = NoConditionalWrites(plain.client)
    storage = S3Storage(StorageSettings(backend="s3", bucket=bucket.name, prefix=bucket.prefix,
                                        endpoint_url=bucket.moto.endpoint, region=REGION, part_size=PART),
                        client=store)
    publish(storage)
    publish(storage, key="t000001/u-2222222222222222", temp_key="u-2222222222222222")
    assert store.refused == 1             # asked once, then no more
    assert bucket.get(bucket.prefix + KEY) == DATA
    assert bucket.objects() == [bucket.prefix + KEY, bucket.prefix + "t000001/u-2222222222222222"]


def test_s3_completion_never_replaces_an_existing_object(bucket):
    """If-None-Match on CompleteMultipartUpload: a blob already at the key (which unique upload
    ids never make) stays, and the publish fails."""
    storage = s3_storage(bucket)
    bucket.client.put_object(Bucket=bucket.name, Key=bucket.prefix + KEY, Body=b"already here")
    temp = write_blob(storage)
    temp.sync()
    with pytest.raises(StorageUnavailable):
        storage.publish(temp, KEY)
    assert bucket.get(bucket.prefix + KEY) == b"already here"


def test_local_writeback_starts_during_the_upload(tmp_path):
    """sync_file_range(SYNC_FILE_RANGE_WRITE) reaches the kernel (a closed descriptor is refused
    by it), and a temporary of a few write-back steps still publishes whole."""
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"x" * 8192)
    start_writeback(fd, 0, 8192)
    os.close(fd)
    with pytest.raises(OSError) as refused:
        start_writeback(fd, 0, 8192)
    assert refused.value.errno == errno.EBADF
    store = LocalStorage(tmp_path / "boxes")
    data = os.urandom(WRITEBACK_STEP // 4)
    temp = store.create_temp("u-1", "t000001/u-1")
    for _ in range(10):
        temp.write(data)
    temp.sync()
    temp.close()
    store.publish(temp, "t000001/u-1")
    assert store.size("t000001/u-1") == 10 * len(data)


def test_local_temp_writes_whole_pages_and_keeps_every_byte(tmp_path, monkeypatch):
    """Large writes reach the file cut at a page boundary (the rest is held for the next write);
    small ones are gathered; whatever the sizes, views or bytes, and flushes in between, the
    file holds exactly what was written, in order."""
    calls: list[tuple[int, int]] = []   # (file offset before, bytes written) of each writev
    real_writev = os.writev

    def recording_writev(fd: int, buffers: list[memoryview]) -> int:
        at = os.lseek(fd, 0, os.SEEK_CUR)
        done = real_writev(fd, buffers)
        calls.append((at, done))
        return done

    monkeypatch.setattr(local_storage.os, "writev", recording_writev)
    rng = random.Random(12)
    store = LocalStorage(tmp_path / "boxes")
    temp = store.create_temp("u-1", "t000001/u-1")
    expected = bytearray()
    flushed_at: set[int] = set()   # file sizes right after a flush: the only unaligned ends
    for n in range(400):
        size = rng.choice((1, 17, 4095, 4096, 4097, 65_552, 196_656, 261_120, rng.randrange(1, 300_000)))
        chunk = rng.randbytes(size)
        temp.write(memoryview(chunk) if n % 2 else chunk)
        expected += chunk
        if n % 97 == 0:
            temp.flush()
            flushed_at.add(len(expected))
    temp.sync()
    flushed_at.add(len(expected))
    temp.close()
    store.publish(temp, "t000001/u-1")
    reader = store.open_read("t000001/u-1")
    try:
        assert store.size("t000001/u-1") == len(expected)
        assert reader.read_at(0, len(expected)) == expected
    finally:
        reader.close()
    ends = [at + done for at, done in calls]
    assert len(calls) > 100
    assert all(end % PAGE == 0 or end in flushed_at for end in ends), \
        [end for end in ends if end % PAGE and end not in flushed_at][:5]


def test_local_temp_reserves_blocks_ahead_and_gives_back_the_rest(tmp_path):
    """While an upload is written its blocks are allocated PREALLOCATE_STEP ahead (the file's
    size stays what was written); `sync` gives back what lies past the end, so a published
    file holds only its own blocks. A second step is reserved once the first is used."""
    store = LocalStorage(tmp_path / "boxes")
    temp = store.create_temp("u-1", "t000001/u-1")
    data = os.urandom(PREALLOCATE_STEP + 3 * 65_552)
    temp.write(data[:300_000])
    stat = os.stat(temp.path)
    assert stat.st_size == 300_000 - 300_000 % PAGE   # the held tail is not on file yet
    assert stat.st_blocks * 512 >= PREALLOCATE_STEP
    temp.write(data[300_000:])
    assert os.stat(temp.path).st_blocks * 512 >= 2 * PREALLOCATE_STEP
    temp.sync()
    stat = os.stat(temp.path)
    assert stat.st_size == len(data)
    assert stat.st_blocks * 512 < len(data) + 64 * 1024, stat.st_blocks
    temp.close()
    store.publish(temp, "t000001/u-1")
    reader = store.open_read("t000001/u-1")
    try:
        assert reader.read_at(0, len(data) + 1) == data
    finally:
        reader.close()


def test_local_temp_full_disk_is_storage_full(tmp_path):
    """A write past the file size limit (EFBIG, as a full disk) is StorageFull, at the write that
    reaches the file or at the sync, never lost."""
    store = LocalStorage(tmp_path / "boxes")
    temp = store.create_temp("u-1", "t000001/u-1")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (TEMP_BUFFER * 4, hard))
    try:
        with pytest.raises(local_storage.StorageFull):
            for _ in range(16):
                temp.write(os.urandom(TEMP_BUFFER))
            temp.sync()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        temp.close()

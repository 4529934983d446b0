"""Issue 12: reads and writes on the event loop, the upload's at-rest work (key derivation,
hashing, encryption) in a bounded worker.

- the pipeline hands `feed` every byte once, in order, in batches of at least 1 MiB (the last may
  be shorter), from the worker thread; `beside` (the plaintext hash) gets the same bytes in
  order, at the same time, in another thread, and its error fails the upload as feed's does;
- a slow disk (a feed that blocks) bounds what is queued, per upload and for all uploads: the
  writer waits instead;
- an error in the worker is raised by the next write and by the drain (the close), never lost;
- the stored SHA-256: of every stored byte, for age and zip alike;
- against a real server: files of several batches arrive byte for byte with OpenSSH sftp, psftp
  and paramiko; the OPEN is answered before the key derivation has finished; a disk that fills
  up fails the writes after it and the CLOSE, and nothing is published.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import resource
import subprocess
import threading
from pathlib import Path

import pytest
from paramiko.sftp import SFTP_FAILURE

from sluis.server.core.pipeline import BATCH, BESIDE_FROM, JOIN_UP_TO, PER_UPLOAD, AtRestWorkers
from tests.support.clients import require_binary
from tests.support.clients_extra import audit, close_raw, decrypt_file, deliveries
from tests.support.waiting import wait_until

MIB = 1 << 20


def _data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# --- the pipeline itself ------------------------------------------------------------------------
def test_feed_sees_every_byte_once_in_order_in_pieces_from_a_worker():
    data = _data(5 * MIB + 12345, 1)
    fed: list[bytes] = []
    threads: set[str] = set()
    started = threading.Event()

    def feed(chunk: bytes) -> None:
        threads.add(threading.current_thread().name)
        fed.append(chunk)

    async def main() -> None:
        pipeline = AtRestWorkers(64 * MIB).pipeline(started.set, feed)
        await pipeline.begin()
        assert started.is_set()
        for at in range(0, len(data), 32768 + 7):   # odd sizes: batches need not align
            pipeline.put(data[at:at + 32768 + 7])
            await pipeline.room()
        await pipeline.drain()
        assert pipeline.drained() and pipeline.queued == 0

    asyncio.run(main())
    assert b"".join(fed) == data
    # 32 KiB writes are joined: pieces of about JOIN_UP_TO, a few per 1 MiB batch.
    assert max(len(chunk) for chunk in fed) < JOIN_UP_TO + 32768 + 7
    assert len(fed) <= 6 * (BATCH // JOIN_UP_TO + 1)
    assert threads and all(name.startswith("sluis-atrest") for name in threads)


def test_large_writes_reach_feed_as_they_came_without_a_copy():
    """OpenSSH's sftp writes 255 KiB at a time, as views of their SFTP message: feed sees those
    very views, in order (no 1 MiB join per batch); small writes are joined, 256 KiB at most."""
    messages = [_data(261_120 + 13, n) for n in range(9)]
    views = [memoryview(m)[13:] for m in messages]
    fed: list[bytes | memoryview] = []

    async def main() -> None:
        pipeline = AtRestWorkers(64 * MIB).pipeline(lambda: None, fed.append)
        await pipeline.begin()
        for view in views:
            pipeline.put(view)
            await pipeline.room()
        for at in range(0, MIB, 4096):   # then PuTTY-sized writes
            pipeline.put(messages[0][at % 200_000:at % 200_000 + 4096])
            await pipeline.room()
        await pipeline.drain()

    asyncio.run(main())
    assert [f.obj for f in fed[:9] if isinstance(f, memoryview)] == messages
    # The second batch ends with the first small write (joined alone); the other 255 make the
    # last batch, joined into pieces of 256 KiB.
    assert [len(f) for f in fed[9:]] == [4096, 64 * 4096, 64 * 4096, 64 * 4096, 63 * 4096]
    assert all(type(f) is bytes for f in fed[9:])
    assert b"".join(fed) == b"".join(views) + b"".join(
        messages[0][at % 200_000:at % 200_000 + 4096] for at in range(0, MIB, 4096))


def test_a_slow_disk_makes_writes_wait_with_bounded_memory():
    """The feed blocks (a disk that does not keep up): the writer stops in `room` with at most
    PER_UPLOAD queued beyond the batch being filled; once the disk moves, everything arrives."""
    gate = threading.Event()
    fed = hashlib.sha256()
    data = _data(24 * MIB, 2)

    def slow_disk(chunk: bytes) -> None:
        gate.wait()
        fed.update(chunk)

    async def main() -> None:
        workers = AtRestWorkers(64 * MIB)
        pipeline = workers.pipeline(lambda: None, slow_disk)
        await pipeline.begin()
        written = 0

        async def writer() -> None:
            nonlocal written
            for at in range(0, len(data), 256 * 1024):
                pipeline.put(data[at:at + 256 * 1024])
                written = at + 256 * 1024
                await pipeline.room()

        task = asyncio.create_task(writer())
        while pipeline not in workers._blocked:   # the writer is waiting for room
            await asyncio.sleep(0)
        assert written < len(data)
        assert pipeline.queued <= PER_UPLOAD + BATCH + 256 * 1024
        assert workers.queued <= PER_UPLOAD + BATCH
        gate.set()
        await task
        await pipeline.drain()

    asyncio.run(main())
    assert fed.hexdigest() == hashlib.sha256(data).hexdigest()


def test_all_uploads_together_stay_under_the_total():
    gate = threading.Event()

    async def main() -> None:
        workers = AtRestWorkers(2 * MIB)
        pipelines = [workers.pipeline(lambda: None, lambda chunk: gate.wait()) for _ in range(3)]
        for p in pipelines:
            await p.begin()
        waiting = []
        for p in pipelines:
            for _ in range(3):
                p.put(bytes(MIB))
            waiting.append(asyncio.create_task(p.room()))
        while not all(p in workers._blocked for p in pipelines[1:]):
            await asyncio.sleep(0)
        # the first may go on (its own queue is within PER_UPLOAD and the total was not yet
        # reached when it wrote); the later ones wait for the total
        assert workers.queued <= 3 * 3 * MIB
        assert not any(t.done() for t in waiting[1:])
        gate.set()
        await asyncio.gather(*waiting)
        for p in pipelines:
            await p.drain()
        assert workers.queued == 0

    asyncio.run(main())


def test_a_worker_error_fails_the_next_write_and_the_drain():
    class DiskFull(OSError):
        pass

    def feed(chunk: bytes) -> None:
        raise DiskFull("no space left")

    async def main() -> None:
        workers = AtRestWorkers(64 * MIB)
        pipeline = workers.pipeline(lambda: None, feed)
        await pipeline.begin()
        pipeline.put(bytes(BATCH))           # a full batch: goes to the worker, which fails
        with pytest.raises(DiskFull):
            await pipeline.drain()
        with pytest.raises(DiskFull):
            pipeline.put(b"more")
        assert workers.queued == 0

        failing_key = workers.pipeline(lambda: (_ for _ in ()).throw(DiskFull("scrypt")), lambda c: None)
        await failing_key.begin()            # resolves although the derivation failed
        with pytest.raises(DiskFull):
            await failing_key.drain()

    asyncio.run(main())


def test_beside_sees_the_same_bytes_in_order_while_feed_works_on_the_batch():
    """Both hooks meet at a barrier inside every full batch: they can only both reach it if they
    run at the same time (in one thread, one after the other, the first would time out)."""
    data = _data(4 * MIB + 4321, 3)
    fed: list[bytes] = []
    beside: list[bytes] = []
    threads: dict[str, set[str]] = {"feed": set(), "beside": set()}
    meet = threading.Barrier(2, timeout=10)
    seen = {"feed": 0, "beside": 0}

    def hook(name: str, out: list[bytes]):
        def take(chunk: bytes | memoryview) -> None:
            before = seen[name]
            seen[name] += len(chunk)
            if before // BATCH != seen[name] // BATCH or before % BATCH == 0:   # once per batch
                if len(data) - before >= BATCH:
                    meet.wait()
            threads[name].add(threading.current_thread().name)
            out.append(bytes(chunk))
        return take

    async def main() -> None:
        pipeline = AtRestWorkers(64 * MIB).pipeline(lambda: None, hook("feed", fed), beside=hook("beside", beside))
        await pipeline.begin()
        for at in range(0, len(data), 261_120):
            pipeline.put(data[at:at + 261_120])
            await pipeline.room()
        await pipeline.drain()

    asyncio.run(main())
    assert b"".join(fed) == data and b"".join(beside) == data
    assert all(name.startswith("sluis-atrest") for name in threads["feed"])
    assert threads["beside"] and all(name.startswith("sluis-beside") for name in threads["beside"])


def test_a_short_batch_runs_beside_in_the_worker_itself():
    """A small file (one batch under BESIDE_FROM): no second thread for a few KiB."""
    order: list[tuple[str, str]] = []

    def hook(name: str):
        return lambda chunk: order.append((name, threading.current_thread().name))

    async def main() -> None:
        pipeline = AtRestWorkers(64 * MIB).pipeline(lambda: None, hook("feed"), beside=hook("beside"))
        await pipeline.begin()
        pipeline.put(bytes(BESIDE_FROM - 1))
        await pipeline.drain()

    asyncio.run(main())
    assert [name for name, _ in order] == ["beside", "feed"]
    assert all(thread.startswith("sluis-atrest") for _, thread in order)


def test_an_error_beside_fails_the_next_write_and_the_drain():
    class HashBroke(RuntimeError):
        pass

    fed: list[int] = []

    def beside(chunk: bytes | memoryview) -> None:
        raise HashBroke("plaintext hash")

    async def main() -> None:
        pipeline = AtRestWorkers(64 * MIB).pipeline(lambda: None, lambda chunk: fed.append(len(chunk)), beside=beside)
        await pipeline.begin()
        for _ in range(3):
            pipeline.put(bytes(BATCH))
        with pytest.raises(HashBroke):
            await pipeline.drain()
        with pytest.raises(HashBroke):
            pipeline.put(b"more")

    asyncio.run(main())
    assert sum(fed) == BATCH     # the failing batch was fed; the queued ones were dropped


def test_without_an_event_loop_both_hooks_run_at_once_in_order():
    """The library and the CLI use the pipeline without `begin`: `put` runs both hooks inline."""
    order: list[str] = []
    pipeline = AtRestWorkers(64 * MIB).pipeline(lambda: order.append("start"), lambda c: order.append("feed"),
                                                beside=lambda c: order.append("beside"))
    pipeline.put(b"one")
    pipeline.put(b"two")
    assert order == ["start", "beside", "feed", "beside", "feed"]


def test_cancel_drops_the_queue_and_waits_for_the_batch_in_hand():
    gate = threading.Event()
    in_feed = threading.Event()
    fed: list[int] = []

    def feed(chunk: bytes) -> None:
        in_feed.set()
        gate.wait()
        fed.append(len(chunk))

    async def main() -> None:
        workers = AtRestWorkers(64 * MIB)
        pipeline = workers.pipeline(lambda: None, feed)
        await pipeline.begin()
        for _ in range(3):
            pipeline.put(bytes(BATCH))
        await asyncio.to_thread(in_feed.wait)
        cancelled = asyncio.create_task(asyncio.to_thread(pipeline.cancel))
        while not pipeline._cancelled:       # the queue is dropped, the batch in hand still runs
            await asyncio.sleep(0)
        assert not cancelled.done()          # cancel waits for the batch in hand
        gate.set()
        await cancelled
        assert workers.queued == 0 and pipeline.queued == 0

    asyncio.run(main())
    assert fed == [BATCH]        # the batch in hand finished; the two queued never reached the disk


# --- against a real server ------------------------------------------------------------------------
def _check_delivered(server, name: str, data: bytes, got: Path) -> None:
    assert decrypt_file(got, server.passphrase(name + ".age")) == data
    [row] = [r for r in deliveries(server) if r["name"] == name]
    assert row["plain_size"] == len(data)
    assert row["plain_sha256"] == hashlib.sha256(data).hexdigest()
    assert row["stored_sha256"] == hashlib.sha256(got.read_bytes()).hexdigest()
    assert row["stored_size"] == got.stat().st_size


@pytest.mark.parametrize("client", ["openssh", "psftp", "paramiko"])
def test_multi_batch_files_byte_for_byte(server, tmp_path, client):
    size = 3 * BATCH + 54321             # several batches and a short last one
    data = _data(size, 10)
    src, got = tmp_path / "a.csv", tmp_path / "a.age"
    src.write_bytes(data)
    if client == "openssh":              # 64 requests in flight: writes also arrive out of order
        require_binary("sftp")
        server.sftp("agency", f"put {src} /genk/a.csv\n")
        server.sftp("genk-clerk", f"get a.csv.age {got}\n")
    elif client == "psftp":              # the engine of WinSCP and FileZilla
        require_binary("psftp")
        require_binary("puttygen")
        batch = tmp_path / "psftp.txt"
        for user, script in (("agency", f"put {src} /genk/a.csv\n"), ("genk-clerk", f"get a.csv.age {got}\n")):
            batch.write_text(script)
            subprocess.run(["psftp", "-batch", "-b", str(batch), "-P", str(server.port), "-noagent",
                            "-i", str(server.accounts[user].ppk()), "-hostkey", server.host_key_fingerprint(),
                            f"{user}@127.0.0.1"], check=True, capture_output=True, timeout=120,
                           stdin=subprocess.DEVNULL)
    else:                                # pipelined writes; reads of 200 KiB (on the event loop)
        sender = server.paramiko("agency")
        with sender.open("/genk/a.csv", "wb") as handle:
            handle.set_pipelined(True)
            for at in range(0, size, 100_000):
                handle.write(data[at:at + 100_000])
        sender.close()
        reader = server.paramiko("genk-clerk")
        with reader.open("a.csv.age", "rb") as handle, open(got, "wb") as out:
            while chunk := handle.read(200 * 1024):
                out.write(chunk)
        reader.close()
    _check_delivered(server, "a.csv", data, got)


def test_open_is_answered_before_the_key_derivation_ends(make_server):
    """scrypt at log N 18 takes a good part of a second (256 MiB); the OPEN does not wait for it.
    A temporary gets the age header once its key is derived, so right after the OPEN reply it is
    still empty, and it fills up later on its own, before any write."""
    server = make_server({"crypto": {"scrypt_log_n": 18}, "limits": {"key_derivations": 1}}).standard().start()
    client = server.paramiko("agency")
    handle = client.open("/genk/slow-key.csv", "wb")
    [temp] = list((server.data_dir / "tmp").iterdir())
    assert temp.stat().st_size == 0, "the OPEN waited for the key derivation"
    wait_until(lambda: temp.stat().st_size > 0, "the header after the key derivation", timeout=60)
    assert temp.read_bytes().startswith(b"age-encryption.org/v1\n-> scrypt ")
    data = _data(300_000, 13)
    handle.write(data)
    handle.close()
    got = server.data_dir / "got.age"
    reader = server.paramiko("genk-clerk")
    got.write_bytes(reader.open("slow-key.csv.age", "rb").read())
    reader.close()
    client.close()
    assert decrypt_file(got, server.passphrase("slow-key.csv.age")) == data


def test_writes_queued_before_the_key_is_ready_arrive(make_server):
    """Writes sent while the key is still being derived wait in the pipeline (bounded) and are
    encrypted once it is ready: the file is complete, nothing is lost or reordered."""
    server = make_server({"crypto": {"scrypt_log_n": 17}}).standard().start()
    client = server.paramiko("agency")
    data = _data(6 * BATCH + 99, 14)
    with client.open("/genk/early.csv", "wb") as handle:
        handle.set_pipelined(True)
        for at in range(0, len(data), 32768):
            handle.write(data[at:at + 32768])
    client.close()
    got = server.data_dir / "early.age"
    reader = server.paramiko("genk-clerk")
    got.write_bytes(reader.open("early.csv.age", "rb").read())
    reader.close()
    _check_delivered(server, "early.csv", data, got)


def test_a_full_disk_fails_every_later_write_and_the_close(make_server):
    """The at-rest worker meets a full disk (the server's file size limit is 1 MiB): the error
    reaches the client on a later write and at CLOSE, which never answers OK; the
    upload is aborted with the reason and nothing is published."""
    server = make_server().standard()
    server.popen_extra["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    server.start()
    client = server.paramiko("agency")
    handle = client.open("/genk/full.csv", "wb")
    results = []
    # More than the pipeline holds (PER_UPLOAD + a batch): the writes must wait for the worker,
    # which fails after 1 MiB, so a write surely sees the error
    for at in range(0, 3 * PER_UPLOAD, 64 * 1024):
        try:
            handle.write(_data(64 * 1024, at))
            results.append("ok")
        except OSError as exc:
            results.append(str(exc))
    failed = [i for i, r in enumerate(results) if r != "ok"]
    assert failed and all(r != "ok" for r in results[failed[0]:]), results   # and every later one
    code, text = close_raw(client, handle)  # paramiko's own close() swallows a failed CLOSE
    client.close()
    assert code == SFTP_FAILURE and "no space" in text, (code, text)
    aborts = wait_until(lambda: audit(server, "upload.abort"), "upload.abort")
    assert "no space" in aborts[-1]["detail"]["error"]
    assert deliveries(server) == []
    assert not list((server.data_dir / "tmp").iterdir())
    assert "[sms" not in server.log


def test_the_stored_digest_names_the_stored_file(make_server, tmp_path):
    """stored_sha256 is the SHA-256 of every stored byte, for age and zip alike: what a recipient
    computes over the file it downloaded (receipts carry it); a changed byte fails decryption."""
    server = make_server().standard()
    server.add_tenant("hasselt", fmt="zip")
    server.add_user("hasselt-clerk", "recipient", "hasselt")
    server.start()
    data = _data(2 * BATCH + 777, 20)
    client = server.paramiko("agency")
    for tenant in ("genk", "hasselt"):
        with client.open(f"/{tenant}/d.csv", "wb") as handle:
            handle.write(data)
    client.close()
    rows = {r["format"]: r for r in deliveries(server)}
    age = (server.data_dir / "boxes" / rows["age"]["blob_key"]).read_bytes()
    zipped = (server.data_dir / "boxes" / rows["zip"]["blob_key"]).read_bytes()
    assert rows["age"]["stored_sha256"] == hashlib.sha256(age).hexdigest()
    assert rows["zip"]["stored_sha256"] == hashlib.sha256(zipped).hexdigest()
    assert rows["age"]["plain_sha256"] == rows["zip"]["plain_sha256"] == hashlib.sha256(data).hexdigest()
    tag_changed = bytearray(age)
    tag_changed[-1] ^= 1
    assert hashlib.sha256(bytes(tag_changed)).hexdigest() != rows["age"]["stored_sha256"]
    body_changed = bytearray(age)
    body_changed[len(age) // 2] ^= 1
    (tmp_path / "changed.age").write_bytes(bytes(body_changed))
    with pytest.raises(Exception, match="authentication|chunk"):
        decrypt_file(tmp_path / "changed.age", server.passphrase("d.csv.age"))


class SlowTemp:
    """A storage stand-in for one temporary whose writes block until `gate` opens (a slow disk)."""

    def __init__(self) -> None:
        self.key = "u-slow"
        self.gate = threading.Event()
        self.data = bytearray()
        self.synced = False

    def write(self, data: bytes) -> int:
        self.gate.wait()
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        self.synced = True

    def close(self) -> None:
        pass


def test_an_upload_over_a_slow_disk_holds_bounded_memory_and_arrives_whole():
    """Upload, reorder window, pipeline, age encryptor and a disk that stalls, composed as
    DropBox.start_upload does: while the disk stalls the writes wait with at most PER_UPLOAD
    (plus the batch being filled) in memory; once it moves, the file decrypts to what was sent
    and the recorded hashes match."""
    from sluis.server.core.encryption import HashingOutput, open_encryptor
    from sluis.server.core.uploads import Upload
    from sluis.server.core.window import MemoryBudget, ReorderWindow

    data = _data(20 * MIB + 4321, 30)
    temp = SlowTemp()
    out = HashingOutput(temp)
    workers = AtRestWorkers(64 * MIB)
    budget = MemoryBudget(64 * MIB)
    upload = Upload(upload_id="u-slow", session=None, tenant=None, name="slow.csv", temp=temp, out=out,
                    passphrase="pass", workers=workers,
                    encryptor=lambda: open_encryptor("age", out, "pass", name="slow.csv", scrypt_log_n=10),
                    window_factory=lambda sink: ReorderWindow(sink, window=8 * MIB, budget=budget,
                                                              max_size=1 << 30))

    async def main() -> None:
        key_ready = upload.begin()                  # its header write stalls on the disk too

        async def sender() -> None:
            for at in range(0, len(data), 32768):
                upload.write(at, data[at:at + 32768])
                await upload.room()

        task = asyncio.create_task(sender())
        while upload._pipeline not in workers._blocked:
            await asyncio.sleep(0)
        assert upload.size < len(data)
        assert upload._pipeline.queued <= PER_UPLOAD + BATCH
        assert not temp.data                        # the disk has taken nothing yet
        assert not key_ready.done()
        temp.gate.set()
        await task
        await upload.drain()
        assert key_ready.done()

    asyncio.run(main())
    sealed = upload.seal()
    assert temp.synced and sealed.plain_size == len(data)
    assert sealed.plain_sha256 == hashlib.sha256(data).hexdigest()
    assert sealed.stored_sha256 == hashlib.sha256(bytes(temp.data)).hexdigest()
    from tests.support.clients_extra import decrypt_bytes
    assert decrypt_bytes(bytes(temp.data), "pass") == data

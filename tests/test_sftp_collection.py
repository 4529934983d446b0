"""Collection: a delivery is collected when one recipient session has read every byte of it (any
order, any block size) and closed the handle; sluis records who, when and from where."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from tests.support.clients_extra import (
    TIMEOUT, audit, blob, connect, decrypt_bytes, deliveries, sftp_on, transport, upload,
)

DATA = blob(200_003, seed=31)


def status(server) -> dict:
    """`sluis status --json`, as an operator would run it."""
    result = subprocess.run([sys.executable, "-m", "sluis.server.cli.main", "-c", str(server.config), "status",
                             "--json"], capture_output=True, text=True, timeout=TIMEOUT, env=server.env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def read_ranges(client, path: str, ranges: list[tuple[int, int]]) -> bytes:
    """Read the given (offset, size) ranges on one handle; return what came back, placed by offset."""
    size = client.stat(path).st_size
    out = bytearray(size)
    with client.open(path, "rb") as handle:
        for offset, length in ranges:
            handle.seek(offset)
            chunk = handle.read(length)
            out[offset:offset + len(chunk)] = chunk
    return bytes(out)


@pytest.fixture
def published(server):
    upload(server, "lijst.csv", DATA)
    [row] = deliveries(server)
    return server, row


def test_partial_read_is_not_collection_full_read_is(published):
    server, row = published
    size = row["stored_size"]
    with connect(server, "genk-clerk") as client:
        read_ranges(client, "/lijst.csv.age", [(0, 1000), (size - 1000, 1000), (5000, 60_000)])
    [after_partial] = deliveries(server)
    assert after_partial["state"] == "published"
    assert after_partial["collected_at"] is None and after_partial["collected_by"] is None
    [shown] = status(server)["deliveries"]
    assert (shown["file"], shown["state"], shown["collected_by"]) == ("lijst.csv.age", "published", None)
    [close] = audit(server, "download.close")
    assert close["detail"]["complete"] is False and close["detail"]["covered"] == 62_000
    assert audit(server, "delivery.collect") == []
    with connect(server, "agency") as sender:                   # still waiting, as the sender sees it
        assert sender.listdir("/genk") == ["lijst.csv"]

    # a full read, in a random order and an odd block size, in one session
    t = transport(server, "genk-clerk")
    try:
        local = "%s:%d" % t.sock.getsockname()
        client = sftp_on(t)
        blocks = [(offset, 7_777) for offset in range(0, size, 7_777)]
        random.Random(3).shuffle(blocks)
        got = read_ranges(client, "/lijst.csv.age", blocks)
    finally:
        t.close()
    assert decrypt_bytes(got, server.passphrase("lijst.csv.age")) == DATA
    [collected] = deliveries(server)
    assert collected["state"] == "collected"
    assert collected["collected_by"] == "genk-clerk"
    assert collected["collected_from"] == local
    assert collected["collected_at"] is not None
    [shown] = status(server)["deliveries"]
    assert (shown["state"], shown["collected_by"]) == ("collected", "genk-clerk")
    [event] = audit(server, "delivery.collect")
    assert (event["actor"], event["source"], event["delivery"]) == ("genk-clerk", local, row["id"])
    with connect(server, "agency") as sender:                   # no longer waiting
        assert sender.listdir("/genk") == []
    with connect(server, "genk-clerk") as client:               # still there to read again
        assert client.listdir("/") == ["lijst.csv.age"]


def test_halves_read_in_two_sessions_are_not_collection(published):
    server, row = published
    half = row["stored_size"] // 2
    for ranges in ([(0, half)], [(half, row["stored_size"] - half)]):
        with connect(server, "genk-clerk") as client:
            read_ranges(client, "/lijst.csv.age", ranges)
    assert deliveries(server)[0]["state"] == "published"
    assert audit(server, "delivery.collect") == []


def test_two_handles_of_one_session_together_collect(published):
    server, row = published
    half = row["stored_size"] // 2
    with connect(server, "genk-clerk") as client:
        read_ranges(client, "/lijst.csv.age", [(half, row["stored_size"] - half)])
        assert deliveries(server)[0]["state"] == "published"
        read_ranges(client, "/lijst.csv.age", [(0, half)])
        assert deliveries(server)[0]["state"] == "collected"


def test_reading_past_the_end_does_not_count(published):
    """Bytes beyond the file do not make up for bytes never read."""
    server, row = published
    size = row["stored_size"]
    with connect(server, "genk-clerk") as client:
        read_ranges(client, "/lijst.csv.age", [(0, size - 10), (size + 100, 1000), (size, 4096)])
    assert deliveries(server)[0]["state"] == "published"


def test_a_full_read_without_close_in_the_same_session_is_not_yet_collection(published):
    server, row = published
    with connect(server, "genk-clerk") as client:
        handle = client.open("/lijst.csv.age", "rb")
        data = handle.read()
        assert len(data) == row["stored_size"]
        assert deliveries(server)[0]["state"] == "published"     # the handle is still open
        handle.close()
        assert deliveries(server)[0]["state"] == "collected"


def test_the_other_tenant_cannot_collect(published):
    server, _ = published
    with connect(server, "gent-clerk") as client:
        with pytest.raises(FileNotFoundError):
            client.open("/lijst.csv.age", "rb")
    assert deliveries(server)[0]["state"] == "published"
    assert audit(server, "download.open") == []

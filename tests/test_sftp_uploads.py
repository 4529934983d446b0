"""Atomic uploads: published only when the client closes the handle after writing; a disconnect
or an error mid-upload publishes nothing and leaves nothing behind. Clients that pipeline, write
out of order, stage as NAME.filepart (WinSCP) or send stray bytes after the data all work.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess

import paramiko
import pytest
from paramiko.sftp import CMD_WRITE, SFTP_FAILURE, SFTP_OK

from tests.support.clients import require_binary
from tests.support.clients_extra import (
    TIMEOUT, assert_nothing_left, audit, blob, close_raw, connect, data_files, decrypt_bytes, deliveries, download,
    raw_status, sftp_on, transport, uploads, wait_audit, wait_until,
)
from tests.support.server import SSH_OPTIONS

DATA = blob(300_017, seed=21)      # not a multiple of 32 KiB


def published_content(server, name: str) -> bytes:
    got = download(server, name + ".age")
    return decrypt_bytes(got, server.passphrase(name + ".age"))


def test_upload_is_invisible_until_the_handle_is_closed(server):
    with connect(server, "agency") as client, connect(server, "genk-clerk") as clerk:
        handle = client.open("/genk/lijst.csv", "wb")
        handle.write(DATA[:100_000])
        handle.write(DATA[100_000:200_000])
        # the municipality sees nothing, no delivery exists, only a hidden temporary
        assert clerk.listdir("/") == []
        with pytest.raises(FileNotFoundError):
            clerk.stat("/lijst.csv.age")
        assert deliveries(server) == []
        assert len(uploads(server)) == 1
        assert data_files(server)["boxes"] == [] and len(data_files(server)["tmp"]) == 1
        # the sender sees its upload in progress, at the size received so far (this session only)
        assert client.stat("/genk/lijst.csv").st_size == 200_000
        with connect(server, "agency") as other_session:
            assert other_session.listdir("/genk") == []
        handle.write(DATA[200_000:])
        handle.close()
        assert clerk.listdir("/") == ["lijst.csv.age"]
        assert client.stat("/genk/lijst.csv").st_size == len(DATA)
    [row] = deliveries(server)
    assert (row["name"], row["state"], row["plain_size"]) == ("lijst.csv", "published", len(DATA))
    assert uploads(server) == [] and data_files(server)["tmp"] == []
    assert data_files(server)["boxes"] == [row["blob_key"]]
    assert published_content(server, "lijst.csv") == DATA


def cut_channel(t: paramiko.Transport, client: paramiko.SFTPClient) -> None:
    client.close()          # the SFTP channel ends without the handle being closed


def cut_transport(t: paramiko.Transport, client: paramiko.SFTPClient) -> None:
    t.close()


def cut_socket(t: paramiko.Transport, client: paramiko.SFTPClient) -> None:
    t.sock.shutdown(socket.SHUT_RDWR)      # no SSH goodbye at all, as when a network drops


@pytest.mark.parametrize("cut", [cut_channel, cut_transport, cut_socket])
def test_disconnect_mid_upload_publishes_nothing(server, cut):
    t = transport(server, "agency")
    try:
        client = sftp_on(t)
        handle = client.open("/genk/lijst.csv", "wb")
        handle.write(DATA[:150_000])
        handle.flush()
        wait_until(lambda: len(data_files(server)["tmp"]) == 1, what="the temporary")
        cut(t, client)
        [abort] = wait_audit(server, "upload.abort")
    finally:
        t.close()
    assert abort["actor"] == "agency" and abort["tenant"] == "genk"
    assert abort["detail"]["name"] == "lijst.csv"
    assert abort["detail"]["received"] == 150_000
    assert abort["source"].startswith("127.0.0.1:")
    assert_nothing_left(server)
    assert audit(server, "delivery.publish") == []
    with connect(server, "genk-clerk") as clerk:
        assert clerk.listdir("/") == []
    assert "[sms console" not in server.log          # no passphrase was sent for it


def test_killed_client_mid_upload_publishes_nothing(server, tmp_path):
    """A real client (OpenSSH sftp, slowed down with -l) killed half-way through a put. The file is
    ten times what the client may burst before its limit bites, so the kill lands mid-upload."""
    require_binary("sftp")
    source = tmp_path / "groot.csv"
    data = blob(3_000_017, seed=22)
    source.write_bytes(data)
    proc = subprocess.Popen(["sftp", "-b", "-", "-l", "300", "-i", str(server.accounts["agency"].key),
                             "-P", str(server.port), *SSH_OPTIONS, "agency@127.0.0.1"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.stdin.write(f"put {source} /genk/groot.csv\n".encode())
        proc.stdin.close()
        wait_until(lambda: uploads(server) and data_files(server)["tmp"], timeout=20, what="upload start")
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    [abort] = wait_audit(server, "upload.abort")
    assert abort["detail"]["received"] < len(data)
    assert_nothing_left(server)


def test_upload_with_a_hole_is_refused_at_close(server):
    with connect(server, "agency") as client:
        handle = client.open("/genk/lijst.csv", "wb", bufsize=0)
        handle.write(DATA[:50_000])
        handle.seek(100_000)
        handle.write(DATA[100_000:150_000])
        code, text = close_raw(client, handle)
        assert code == SFTP_FAILURE and "gap" in text
        assert client.listdir("/genk") == []
    [abort] = audit(server, "upload.abort")
    assert "gap" in abort["detail"]["error"]
    assert_nothing_left(server)


def test_empty_upload_is_refused(server):
    with connect(server, "agency") as client:
        handle = client.open("/genk/leeg.csv", "wb")
        code, text = close_raw(client, handle)
        assert code == SFTP_FAILURE and "empty" in text
    assert len(audit(server, "upload.abort")) == 1
    assert_nothing_left(server)


@pytest.mark.parametrize("refused_write", ["beyond the size limit", "behind the stream"])
def test_refused_write_then_close_publishes_nothing(make_server, refused_write):
    """A client whose write was refused closes its handle (they all do): that must not publish
    what happened to arrive before the refusal."""
    server = make_server({"upload": {"max_file_size": "128KiB"}}).standard().start()
    with connect(server, "agency") as client:
        handle = client.open("/genk/lijst.csv", "wb", bufsize=0)
        handle.write(DATA[:100_000])
        with pytest.raises(IOError):
            if refused_write == "behind the stream":
                handle.seek(0)
                handle.write(b"HEADER")
            else:
                handle.write(DATA[100_000:200_000])
        code, text = close_raw(client, handle)
        assert code != SFTP_OK, text
        assert client.listdir("/genk") == []
    assert audit(server, "delivery.publish") == []
    assert len(audit(server, "upload.abort")) == 1
    assert_nothing_left(server)


def test_a_refused_write_that_is_retried_does_not_block_publishing(make_server):
    """A write too far ahead of the stream is refused, but the upload stays open: once the client
    has written the bytes before it and sends the refused write again, the file is complete."""
    server = make_server({"upload": {"window": "64KiB"}}).standard().start()
    with connect(server, "agency") as client:
        handle = client.open("/genk/lijst.csv", "wb", bufsize=0)
        handle.write(DATA[:10_000])
        handle.seek(200_000)
        with pytest.raises(IOError):
            handle.write(DATA[200_000:])                # 190 000 bytes ahead: more than the window
        handle.seek(10_000)
        handle.write(DATA[10_000:200_000])
        handle.seek(200_000)
        handle.write(DATA[200_000:])                    # the retry
        code, text = close_raw(client, handle)
        assert code == SFTP_OK, text
    assert published_content(server, "lijst.csv") == DATA


def test_new_upload_of_the_same_name_replaces_the_unfinished_one(server):
    with connect(server, "agency") as client:
        first = client.open("/genk/lijst.csv", "wb")
        first.write(b"old" * 1000)
        first.flush()
        with client.open("/genk/lijst.csv", "wb") as second:
            second.write(DATA)
        first.close()                      # its upload was already discarded: nothing happens
        assert client.listdir_attr("/genk")[0].st_size == len(DATA)
    [row] = deliveries(server)
    assert row["plain_size"] == len(DATA)
    [abort] = audit(server, "upload.abort")
    assert "replaced" in abort["detail"]["reason"]
    assert data_files(server)["tmp"] == []
    assert published_content(server, "lijst.csv") == DATA


# --- WinSCP: NAME.filepart, then rename --------------------------------------------------------------
def winscp_upload(client: paramiko.SFTPClient, name: str, data: bytes, *, rename: bool = True) -> None:
    """WinSCP's sequence for an upload with 'transfer to temporary filename' and 'preserve time'."""
    mtime = 1_600_000_000
    with pytest.raises(FileNotFoundError):
        client.stat(f"/genk/{name}")                            # does the target exist?
    handle = client.open(f"/genk/{name}.filepart", "wb")        # write|create|trunc
    handle.set_pipelined(True)
    for offset in range(0, len(data), 32_768):
        handle.write(data[offset:offset + 32_768])
    handle.utime((mtime, mtime))                                 # FSETSTAT times
    handle.close()
    client.utime(f"/genk/{name}.filepart", (mtime, mtime))       # SETSTAT times on the temporary
    if not rename:
        return
    client.rename(f"/genk/{name}.filepart", f"/genk/{name}")
    client.utime(f"/genk/{name}", (mtime, mtime))                # SETSTAT times on the final name
    assert client.stat(f"/genk/{name}").st_size == len(data)     # compare the size


def test_winscp_filepart_upload_is_one_delivery(server):
    with connect(server, "agency") as client:
        winscp_upload(client, "lijst.csv", DATA)
        assert client.listdir("/genk") == ["lijst.csv"]
        with pytest.raises(FileNotFoundError):
            client.stat("/genk/lijst.csv.filepart")
    [row] = deliveries(server)
    assert (row["name"], row["stored_name"], row["plain_size"]) == ("lijst.csv", "lijst.csv.age", len(DATA))
    [start] = audit(server, "upload.start")
    assert start["detail"]["name"] == "lijst.csv.filepart"
    [publish] = audit(server, "delivery.publish")
    assert publish["detail"]["name"] == "lijst.csv"
    assert audit(server, "upload.abort") == [] and audit(server, "sftp.deny") == []
    assert uploads(server) == [] and data_files(server)["tmp"] == []
    with connect(server, "genk-clerk") as clerk:
        assert clerk.listdir("/") == ["lijst.csv.age"]
    assert published_content(server, "lijst.csv") == DATA


def test_winscp_filepart_never_renamed_is_discarded(server):
    with connect(server, "agency") as client:
        winscp_upload(client, "lijst.csv", DATA, rename=False)
        assert client.stat("/genk/lijst.csv.filepart").st_size == len(DATA)
        with connect(server, "genk-clerk") as clerk:
            assert clerk.listdir("/") == []
    [abort] = wait_audit(server, "upload.abort")
    assert abort["detail"]["name"] == "lijst.csv.filepart"
    assert_nothing_left(server)


def test_only_a_completed_filepart_can_be_renamed(server):
    with connect(server, "agency") as client:
        handle = client.open("/genk/lijst.csv.filepart", "wb")
        handle.write(DATA[:1000])
        handle.flush()
        with pytest.raises(PermissionError):                     # still open: not complete yet
            client.rename("/genk/lijst.csv.filepart", "/genk/lijst.csv")
        handle.close()
        with pytest.raises(FileNotFoundError):                   # into a folder
            client.rename("/genk/lijst.csv.filepart", "/genk/sub/lijst.csv")
        with pytest.raises(PermissionError):
            client.rename("/genk/lijst.csv.filepart", "/genk/.lijst.csv")   # a bad name
        client.rename("/genk/lijst.csv.filepart", "/genk/lijst.csv")
    assert [d["name"] for d in deliveries(server)] == ["lijst.csv"]


# --- tolerance: several requests in flight, out of order, stray bytes --------------------------------
def test_pipelined_upload(server):
    with connect(server, "agency") as client:
        with client.open("/genk/lijst.csv", "wb") as handle:
            handle.set_pipelined(True)
            for offset in range(0, len(DATA), 7_001):            # odd block size, many in flight
                handle.write(DATA[offset:offset + 7_001])
        assert client.stat("/genk/lijst.csv").st_size == len(DATA)
    assert published_content(server, "lijst.csv") == DATA


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_out_of_order_writes_on_one_handle(server, order):
    block = 20_000
    offsets = list(range(0, len(DATA), block))
    if order == "reversed":
        offsets.reverse()
    else:
        random.Random(5).shuffle(offsets)
    with connect(server, "agency") as client:
        with client.open("/genk/lijst.csv", "wb", bufsize=0) as handle:
            handle.set_pipelined(True)
            for offset in offsets:
                handle.seek(offset)
                handle.write(DATA[offset:offset + block])
    [row] = deliveries(server)
    assert row["plain_size"] == len(DATA)
    assert published_content(server, "lijst.csv") == DATA


def test_write_requests_with_trailing_bytes_are_accepted(server):
    """rclone 1.60 (pkg/sftp) sends SSH_FXP_WRITE with bytes after the data; OpenSSH ignores them."""
    stray = [b"\x00", b"\x00\x00\x00\x04junk", b"\xff" * 17, b""]
    with connect(server, "agency") as client:
        handle = client.open("/genk/lijst.csv", "wb")
        block = 50_000
        for number, offset in enumerate(range(0, len(DATA), block)):
            msg = paramiko.Message()
            msg.add_string(handle.handle)
            msg.add_int64(offset)
            msg.add_string(DATA[offset:offset + block])
            msg.add_bytes(stray[number % len(stray)])
            code, text = raw_status(client, CMD_WRITE, msg)
            assert code == SFTP_OK, text
        handle.close()
        assert client.stat("/genk/lijst.csv").st_size == len(DATA)
    [row] = deliveries(server)
    assert row["plain_size"] == len(DATA)
    assert published_content(server, "lijst.csv") == DATA

"""What each role sees and may do over SFTP (paramiko as the client).

Recipient: its tenant's box is '/', holding NAME.age; list, stat, download, delete, nothing else
(times may be 'set': acknowledged, ignored). Sender: one folder per active tenant, its own
waiting deliveries by name and plaintext size, create files, never read one.
"""

from __future__ import annotations

import errno
import stat

import pytest

from sluis.server.cli.common import operator
from tests.support.clients_extra import (
    audit, blob, connect, data_files, decrypt_bytes, deliveries, download, upload,
)

DATA = blob(150_001, seed=1)


# --- recipient -------------------------------------------------------------------------------------
def test_recipient_sees_its_box_as_root(server):
    upload(server, "lijst.csv", DATA)
    upload(server, "andere.csv", blob(1000, seed=2), tenant="gent")
    genk = deliveries(server, name="lijst.csv")[0]
    with connect(server, "genk-clerk") as client:
        assert client.normalize(".") == "/"
        entries = client.listdir_attr("/")
        assert [e.filename for e in entries] == ["lijst.csv.age"]
        assert entries[0].st_size == genk["stored_size"] > len(DATA)
        assert stat.S_ISREG(entries[0].st_mode)
        attrs = client.stat("/lijst.csv.age")
        assert attrs.st_size == genk["stored_size"]
        assert client.stat("/").st_mode & stat.S_IFDIR
        # the same listing whatever '/' is called
        assert client.listdir(".") == client.listdir("/./") == ["lijst.csv.age"]
        # there are no folders in a recipient's box: not its tenant's name, not the sender's view
        for path in ("/genk", "/genk/lijst.csv", "/lijst.csv"):
            with pytest.raises(FileNotFoundError):
                client.stat(path)
    with connect(server, "gent-clerk") as client:
        assert client.listdir("/") == ["andere.csv.age"]


def test_recipient_downloads_and_deletes(server):
    upload(server, "lijst.csv", DATA)
    got = download(server, "lijst.csv.age")
    assert decrypt_bytes(got, server.passphrase("lijst.csv.age")) == DATA
    [row] = deliveries(server)
    assert data_files(server)["boxes"] == [row["blob_key"]]
    with connect(server, "genk-clerk") as client:
        client.remove("/lijst.csv.age")
        assert client.listdir("/") == []
        with pytest.raises(FileNotFoundError):
            client.stat("/lijst.csv.age")
        with pytest.raises(FileNotFoundError):
            client.remove("/lijst.csv.age")
    [row] = deliveries(server)
    assert (row["state"], row["removed_reason"]) == ("removed", "deleted")
    assert data_files(server)["boxes"] == []
    [removal] = audit(server, "delivery.remove")
    assert removal["actor"] == "genk-clerk" and removal["detail"]["reason"] == "deleted"


RECIPIENT_REFUSALS = {
    "upload new file": lambda c: c.open("/nieuw.csv", "wb"),
    "overwrite stored file": lambda c: c.open("/lijst.csv.age", "wb"),
    "open for read and write": lambda c: c.open("/lijst.csv.age", "r+"),
    "append": lambda c: c.open("/lijst.csv.age", "ab"),
    "mkdir": lambda c: c.mkdir("/map"),
    "rmdir": lambda c: c.rmdir("/"),
    "rename": lambda c: c.rename("/lijst.csv.age", "/ander.age"),
    "posix-rename": lambda c: c.posix_rename("/lijst.csv.age", "/ander.age"),
    "symlink": lambda c: c.symlink("/lijst.csv.age", "/link.age"),
    "readlink": lambda c: c.readlink("/lijst.csv.age"),
    "chmod": lambda c: c.chmod("/lijst.csv.age", 0o644),
    "chown": lambda c: c.chown("/lijst.csv.age", 1000, 1000),
    "truncate": lambda c: c.truncate("/lijst.csv.age", 10),
    "remove the root": lambda c: c.remove("/"),
}


def test_recipient_may_do_nothing_else(server):
    upload(server, "lijst.csv", DATA)
    before = deliveries(server)
    with connect(server, "genk-clerk") as client:
        for what, attempt in RECIPIENT_REFUSALS.items():
            with pytest.raises(OSError) as excinfo:
                attempt(client)
            assert excinfo.value.errno == errno.EACCES, (what, excinfo.value)
        assert client.listdir("/") == ["lijst.csv.age"]
        # a hard link is not even in the protocol sluis speaks
        with pytest.raises(IOError):
            client._request(200, "hardlink@openssh.com", "/lijst.csv.age", "/link.age")
    assert deliveries(server) == before
    assert len(data_files(server)["boxes"]) == 1 and data_files(server)["tmp"] == []
    denials = audit(server, "sftp.deny")
    assert {d["detail"]["op"] for d in denials} >= {"open_write", "mkdir", "rename", "symlink", "setstat"}
    assert all(d["actor"] == "genk-clerk" and d["tenant"] == "genk" for d in denials)


def test_recipient_setstat_of_times_is_acknowledged_and_ignored(server):
    upload(server, "lijst.csv", DATA)
    with connect(server, "genk-clerk") as client:
        before = client.stat("/lijst.csv.age")
        client.utime("/lijst.csv.age", (1_000_000, 2_000_000))
        after = client.stat("/lijst.csv.age")
        assert (after.st_mtime, after.st_size) == (before.st_mtime, before.st_size)
        assert after.st_mtime != 2_000_000
        with client.open("/lijst.csv.age", "rb") as handle:
            handle.utime((1, 2))                 # FSETSTAT with times only: fine
            with pytest.raises(PermissionError):
                handle.chmod(0o777)
        # times on a file that does not exist are still 'no such file'
        with pytest.raises(FileNotFoundError):
            client.utime("/bestaat-niet.age", (1, 2))


# --- sender ----------------------------------------------------------------------------------------
def test_sender_sees_one_folder_per_active_tenant(server):
    """...and its read-only /receipts folder (docs/receipts.md)."""
    with connect(server, "agency") as client:
        entries = client.listdir_attr("/")
        assert sorted(e.filename for e in entries) == ["genk", "gent", "receipts"]
        assert all(stat.S_ISDIR(e.st_mode) for e in entries)
        assert client.listdir("/genk") == []
        server.app().directory.disable_tenant(operator(), "gent")
        assert client.listdir("/") == ["genk", "receipts"]
        with pytest.raises(FileNotFoundError):
            client.listdir("/gent")
        with pytest.raises(FileNotFoundError):
            client.open("/gent/lijst.csv", "wb")


def test_sender_lists_its_own_waiting_deliveries_by_name_and_size(server):
    server.add_user("agency-2", "sender")
    upload(server, "lijst.csv", DATA)
    with connect(server, "agency") as client:
        [entry] = client.listdir_attr("/genk")
        assert (entry.filename, entry.st_size) == ("lijst.csv", len(DATA))
        assert client.stat("/genk/lijst.csv").st_size == len(DATA)
        assert client.listdir("/gent") == []
        with pytest.raises(FileNotFoundError):
            client.stat("/genk/lijst.csv.age")     # the sender never sees the stored name
    with connect(server, "agency-2") as client:        # another sender sees none of it
        assert client.listdir("/genk") == []
        with pytest.raises(FileNotFoundError):
            client.stat("/genk/lijst.csv")
    download(server, "lijst.csv.age")                  # collected: no longer waiting
    with connect(server, "agency") as client:
        assert client.listdir("/genk") == []
        with pytest.raises(FileNotFoundError):
            client.stat("/genk/lijst.csv")


def test_sender_can_never_read_a_stored_file(server):
    upload(server, "lijst.csv", DATA)
    with connect(server, "agency") as client:
        for path, mode in (("/genk/lijst.csv", "rb"), ("/genk/lijst.csv", "r+"),
                           ("/genk/lijst.csv.age", "rb"), ("/genk/lijst.csv", "ab")):
            with pytest.raises(PermissionError):
                client.open(path, mode)
        # not even its own upload while it is being written (a correction: one list waits per tenant)
        with client.open("/genk/lijst.csv", "wb") as handle:
            handle.write(b"x" * 1000)
            with pytest.raises(PermissionError):
                client.open("/genk/lijst.csv", "rb")
            with pytest.raises(IOError):
                handle.read(10)        # a write handle cannot be read from either
    assert [a["detail"]["op"] for a in audit(server, "download.open")] == []
    denials = [d["detail"]["op"] for d in audit(server, "sftp.deny")]
    assert denials.count("open_read") >= 3


def test_sender_may_withdraw_a_waiting_delivery_but_not_make_folders(server):
    upload(server, "lijst.csv", DATA)
    with connect(server, "agency") as client:
        with pytest.raises(PermissionError):
            client.mkdir("/genk/map")
        with pytest.raises(PermissionError):
            client.mkdir("/nieuw")
        with pytest.raises(PermissionError):
            client.remove("/genk")
        with pytest.raises(PermissionError):
            client.rename("/genk/lijst.csv", "/genk/ander.csv")     # only WinSCP's .filepart
        with pytest.raises(PermissionError):
            client.symlink("/genk/lijst.csv", "/genk/link")
        with pytest.raises(PermissionError):
            client.chmod("/genk/lijst.csv", 0o644)
        client.utime("/genk/lijst.csv", (1, 2))                      # times: acknowledged
        client.remove("/genk/lijst.csv")
        assert client.listdir("/genk") == []
    [row] = deliveries(server)
    assert (row["state"], row["removed_reason"]) == ("removed", "withdrawn")
    assert data_files(server) == {"boxes": [], "tmp": []}

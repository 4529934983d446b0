"""Two tenants cannot see, read or reach each other; paths are normalised, authorised, confined.

One server for the module holds a waiting delivery for genk and one for gent; every attack below
is tried against it and must fail without revealing or creating anything.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Iterator

import paramiko
import pytest
from paramiko.sftp import CMD_OPEN, CMD_OPENDIR, CMD_STAT

from sluis.server.cli.common import operator
from tests.support.clients_extra import (
    audit, blob, connect, data_files, decrypt_bytes, deliveries, download, raw_status, upload, uploads,
)
from tests.support.server import SluisServer

GENK_DATA = blob(120_000, seed=11)
GENT_DATA = blob(90_000, seed=12)
REFUSED = (errno.ENOENT, errno.EACCES)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluisServer]:
    server = SluisServer(tmp_path_factory.mktemp("isolation")).standard()
    server.add_tenant("hasselt")
    server.app().directory.disable_tenant(operator(), "hasselt")
    server.add_user("agency-2", "sender")
    server.start()
    try:
        upload(server, "genk-lijst.csv", GENK_DATA)
        upload(server, "gent-file", GENT_DATA, tenant="gent")
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def genk_clerk(shared: SluisServer) -> Iterator[paramiko.SFTPClient]:
    with connect(shared, "genk-clerk") as client:
        yield client


@pytest.fixture(scope="module")
def agency(shared: SluisServer) -> Iterator[paramiko.SFTPClient]:
    with connect(shared, "agency") as client:
        yield client


@pytest.fixture
def unchanged(shared: SluisServer) -> Iterator[None]:
    """The test must leave deliveries, uploads and the data dir exactly as they were."""
    before = (deliveries(shared), data_files(shared))
    yield
    assert (deliveries(shared), data_files(shared)) == before
    assert uploads(shared) == []


def gent_reads(server: SluisServer) -> list[dict]:
    gent_id = deliveries(server, name="gent-file")[0]["id"]
    return [r for r in audit(server, "download.open") if r["delivery"] == gent_id]


# --- what each recipient sees ----------------------------------------------------------------------
def test_each_recipient_lists_only_its_own_box(shared):
    with connect(shared, "genk-clerk") as client:
        assert client.listdir("/") == ["genk-lijst.csv.age"]
    with connect(shared, "gent-clerk") as client:
        assert client.listdir("/") == ["gent-file.age"]
        with pytest.raises(FileNotFoundError):
            client.stat("/genk-lijst.csv.age")          # the other tenant's exact stored name
        with pytest.raises(FileNotFoundError):
            client.open("/genk-lijst.csv.age", "rb")


RECIPIENT_ATTACKS = [
    "/gent-file.age", "gent-file.age", "/gent-file.age/", "/./gent-file.age/.",
    "/../gent-file.age", "../gent-file.age", "/../gent/gent-file.age", "/genk/../../gent/gent-file.age",
    "genk/../../x", "/genk-lijst.csv.age/../../gent-file.age",
    "//gent/gent-file.age", "//gent-file.age", "//etc/passwd", "/etc/passwd", "/proc/self/environ",
    "%2F..%2Fgent-file.age", "..%2fgent-file.age", "..%2F..%2Fgent%2Fgent-file.age", "%2e%2e/gent-file.age",
    "\\gent-file.age", "..\\gent-file.age", "\\\\gent\\gent-file.age", "..\uff0fgent-file.age",
    "/gent-file.age\x00", "/genk-lijst.csv.age\x00/../gent-file.age", "/gent-file.age\n",
]


@pytest.mark.parametrize("path", RECIPIENT_ATTACKS)
def test_recipient_cannot_reach_the_other_box(shared, genk_clerk, unchanged, path):
    with pytest.raises(OSError) as excinfo:
        genk_clerk.stat(path)
    assert excinfo.value.errno in REFUSED
    with pytest.raises(OSError) as excinfo:
        genk_clerk.open(path, "rb")
    assert excinfo.value.errno in REFUSED
    try:
        listed = genk_clerk.listdir(path)
    except OSError as exc:
        assert exc.errno in REFUSED
    else:
        assert "gent-file.age" not in listed
    assert gent_reads(shared) == []


def test_recipient_cannot_name_the_blob_on_disk(shared, genk_clerk, unchanged):
    """Real paths mean nothing: the server never maps a client path onto the filesystem."""
    [gent] = deliveries(shared, name="gent-file")
    blob_path = shared.data_dir / "boxes" / gent["blob_key"]
    assert blob_path.is_file()
    for path in (str(blob_path), gent["blob_key"], f"/{gent['blob_key']}", str(shared.data_dir / "state.db")):
        with pytest.raises(OSError):
            genk_clerk.open(path, "rb")
        with pytest.raises(OSError):
            genk_clerk.stat(path)
    assert gent_reads(shared) == []


def test_escapes_are_refused_not_clamped(genk_clerk, agency):
    """'..' above '/' is an error (not silently '/'), so a client learns nothing by probing."""
    for client in (genk_clerk, agency):
        for path in ("..", "/..", "/../..", "genk/../.."):
            with pytest.raises(PermissionError):
                client.normalize(path)
    assert agency.normalize("/genk/../gent/.") == "/gent"
    assert genk_clerk.normalize("/a/../b") == "/b"


def test_invalid_utf8_and_overlong_paths_are_refused(genk_clerk, agency):
    for client in (genk_clerk, agency):
        for path in (b"/\xff\xfe", b"/genk/\xc0\xaf", b"/" + b"a" * 1100, b"/genk/" + b"a/" * 600):
            for kind in (CMD_STAT, CMD_OPENDIR):
                msg = paramiko.Message()
                msg.add_string(path)
                code, text = raw_status(client, kind, msg)
                assert code == paramiko.sftp.SFTP_PERMISSION_DENIED, (path, text)


def test_links_cannot_be_made_or_followed(shared, genk_clerk, agency, unchanged):
    for client, target, link in ((genk_clerk, "/../gent/gent-file.age", "/link.age"),
                                 (genk_clerk, "/gent-file.age", "/genk-lijst.csv.age"),
                                 (agency, "/gent/gent-file", "/genk/link"),
                                 (agency, "/etc/passwd", "/genk/passwd")):
        with pytest.raises(PermissionError):
            client.symlink(target, link)
        with pytest.raises(PermissionError):
            client.readlink(link)
    # lstat and stat agree (there are no links): the same attributes
    assert genk_clerk.lstat("/genk-lijst.csv.age").st_size == genk_clerk.stat("/genk-lijst.csv.age").st_size
    assert {d["detail"]["op"] for d in audit(shared, "sftp.deny")} >= {"symlink", "readlink"}


# --- senders ---------------------------------------------------------------------------------------
SENDER_WRITE_ATTACKS = [
    "/x", "x", "/", "/genk", "/genk/", "/genk/.", "/genk/..", "/genk/a/b", "/genk/a/b/c", "/nope/x",
    "/hasselt/x", "/genk/../x", "/../genk/x", "../genk/x", "//genk/x", "//gent/x", "//etc/passwd",
    "/genk\\x", "/genk/..\\gent\\x", "\\genk\\x", "/genk/a\x00b", "/genk/a\nb", "/genk/a\x7fb",
    "/genk/a\u202eb", "/genk/a\u200bb", "/genk/.hidden", "/genk/..%2fgent%2fx", "/genk/" + "a" * 201,
    "/genk/" + "\u00e9" * 101, "/" + "genk/" * 250 + "x",
]


@pytest.mark.parametrize("path", SENDER_WRITE_ATTACKS)
def test_sender_writes_only_to_an_active_tenant_folder(shared, agency, unchanged, path):
    with pytest.raises(OSError) as excinfo:
        agency.open(path, "wb")
    assert excinfo.value.errno in REFUSED
    # the raw request too (paramiko does not get a chance to interpret anything)
    msg = paramiko.Message()
    msg.add_string(path.encode())
    msg.add_int(paramiko.sftp.SFTP_FLAG_WRITE | paramiko.sftp.SFTP_FLAG_CREATE | paramiko.sftp.SFTP_FLAG_TRUNC)
    msg.add_int(0)      # no attributes
    code, _ = raw_status(agency, CMD_OPEN, msg)
    assert code in (paramiko.sftp.SFTP_PERMISSION_DENIED, paramiko.sftp.SFTP_NO_SUCH_FILE)


def test_sender_cannot_see_disabled_tenants_or_other_senders(shared, agency, unchanged):
    assert sorted(agency.listdir("/")) == ["genk", "gent", "receipts"]   # receipts: docs/receipts.md
    for path in ("/hasselt", "/hasselt/", "/nope"):
        with pytest.raises(FileNotFoundError):
            agency.stat(path)
        with pytest.raises(FileNotFoundError):
            agency.listdir(path)
    # names of one tenant do not exist in the other tenant's folder
    with pytest.raises(FileNotFoundError):
        agency.stat("/gent/genk-lijst.csv")
    with pytest.raises(FileNotFoundError):
        agency.stat("/genk/gent-file")
    assert agency.listdir("/genk") == ["genk-lijst.csv"]
    assert agency.listdir("/gent") == ["gent-file"]
    with connect(shared, "agency-2") as other:
        assert other.listdir("/genk") == other.listdir("/gent") == []
        with pytest.raises(FileNotFoundError):
            other.remove("/genk/genk-lijst.csv")        # cannot withdraw another sender's file


def test_sender_cannot_move_a_file_to_another_tenant(shared, agency, unchanged):
    # staged under the waiting file's name (a correction): one list waits per tenant
    with agency.open("/genk/genk-lijst.csv.filepart", "wb") as handle:
        handle.write(b"data for genk only")
    with pytest.raises(PermissionError):
        agency.rename("/genk/genk-lijst.csv.filepart", "/gent/genk-lijst.csv")
    with pytest.raises(PermissionError):
        agency.posix_rename("/genk/genk-lijst.csv.filepart", "/gent/genk-lijst.csv")
    with pytest.raises(PermissionError):
        agency.rename("/genk/genk-lijst.csv", "/gent/genk-lijst.csv")
    agency.remove("/genk/genk-lijst.csv.filepart")       # drop the staged upload again


def test_encoded_separators_are_plain_characters(make_server, tmp_path):
    """'%2F' is not a separator: such a name stays a single file in the folder it was sent to."""
    server = make_server().standard().start()
    with connect(server, "agency") as client:
        with client.open("/genk/x%2F..%2Fgent%2Fy", "wb") as handle:
            handle.write(b"percent")
    [row] = deliveries(server)
    tenants = {t.id: t.name for t in server.app().directory.tenants()}
    assert (tenants[row["tenant_id"]], row["name"]) == ("genk", "x%2F..%2Fgent%2Fy")
    with connect(server, "gent-clerk") as client:
        assert client.listdir("/") == []
    got = download(server, "x%2F..%2Fgent%2Fy.age")
    assert decrypt_bytes(got, server.passphrase("x%2F..%2Fgent%2Fy.age")) == b"percent"


def test_longest_allowed_name_round_trips(make_server):
    server = make_server().standard().start()
    name = "n" * 196 + ".csv"                    # 200 bytes: the limit
    with connect(server, "agency") as client:
        with client.open(f"/genk/{name}", "wb") as handle:
            handle.write(b"long name")
        assert client.listdir("/genk") == [name]
        with pytest.raises(PermissionError):
            client.open(f"/genk/x{name}", "wb")
    got = download(server, name + ".age")
    assert decrypt_bytes(got, server.passphrase(name + ".age")) == b"long name"


def test_disabled_tenant_loses_access_at_once(make_server):
    server = make_server().standard().start()
    with connect(server, "agency") as client:
        with client.open("/gent/voor-gent.csv", "wb") as handle:
            handle.write(b"x" * 1000)
        server.app().directory.disable_tenant(operator(), "gent")
        with pytest.raises(FileNotFoundError):
            client.open("/gent/nog-een.csv", "wb")
        assert client.listdir("/") == ["genk", "receipts"]
    assert [d["name"] for d in deliveries(server)] == ["voor-gent.csv"]
    assert uploads(server) == []
    assert Path(server.data_dir / "tmp").exists() and data_files(server)["tmp"] == []

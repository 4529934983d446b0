"""One list waits per tenant, over SFTP with two real clients (OpenSSH sftp and paramiko) at once.

Issue 8: "two senders uploading different files to one tenant both get OK and one file is
silently replaced". Now exactly one file waits, the other client sees the failure (at open, or
at CLOSE when both passed the open check), and exactly one set of SMS goes out (the Twilio
stand-in through the real twilio library). A same-name upload from either client stays a
correction.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from paramiko.sftp import CMD_CLOSE

from sluis.keydelivery.outbox import PENDING
from tests.support.clients import require_binary
from tests.support.server import SSH_OPTIONS, SluisServer
from tests.support.sms import twilio_server
from tests.support.twilio_standin import TwilioStandIn
from tests.support.waiting import wait_until

PHONES = ("+32470123456", "+32471234567")
WAIT = 20.0


@pytest.fixture
def srv(make_server: Any, twilio: TwilioStandIn) -> SluisServer:
    require_binary("sftp")
    return twilio_server(make_server, twilio, tenant="hasselt", phones=PHONES, senders=("agency", "agency-2"),
                         crypto={"scrypt_log_n": 10}).start()


def _throttled_put(srv: SluisServer, user: str, source: Path, target: str) -> subprocess.Popen[str]:
    """OpenSSH sftp at ~200 KB/s (-l is in Kbit/s): the upload stays open while the other client works."""
    process = subprocess.Popen(["sftp", "-l", "1600", "-b", "-", "-i", str(srv.accounts[user].key),
                                "-P", str(srv.port), *SSH_OPTIONS, f"{user}@127.0.0.1"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdin is not None
    process.stdin.write(f"put {source} {target}\n")
    process.stdin.close()
    return process


def _deliveries(srv: SluisServer) -> list[Any]:
    return srv.app().db.query("SELECT id, name, state, removed_reason FROM deliveries ORDER BY created_at")


def _one_set_of_sms(srv: SluisServer, twilio: TwilioStandIn, stored_name: str) -> None:
    """Each phone got exactly one SMS, for `stored_name`, and no other delivery has key jobs."""
    messages = twilio.wait_for_messages(len(PHONES), timeout=WAIT)
    [delivery] = [d for d in _deliveries(srv) if d["state"] == "published"]
    wait_until(lambda: all(j.state != PENDING for j in srv.app().outbox.jobs(delivery["id"])),
               "the key jobs to be handled", WAIT)
    time.sleep(1.5)  # more than a worker tick (and a retry interval): nothing more goes out
    messages = twilio.messages
    assert sorted(m.to for m in messages) == sorted(PHONES), [m.to for m in messages]
    assert all(stored_name in m.body for m in messages)
    jobs = srv.app().db.query("SELECT DISTINCT delivery_id FROM outbox WHERE kind = 'sms'")
    assert [r[0] for r in jobs] == [delivery["id"]]


def test_openssh_loses_at_close_while_paramiko_publishes(srv, twilio, tmp_path):
    """Both uploads pass the check at open; the publishing transaction refuses the slower one."""
    slow = tmp_path / "slow.csv"
    slow.write_bytes(b"rij;" * 300_000)                     # ~1.2 MB: ~6 s at the throttled rate
    client = _throttled_put(srv, "agency-2", slow, "/hasselt/slow.csv")
    try:
        db = srv.app().db
        wait_until(lambda: db.query("SELECT 1 FROM uploads WHERE name = 'slow.csv'"), "the slow upload to open", WAIT)
        with srv.paramiko("agency") as sftp:
            with sftp.open("/hasselt/fast.csv", "wb") as handle:
                handle.write(b"fast;list\n")
        assert client.poll() is None, "the slow upload finished before the other published"
        client.wait(timeout=WAIT * 2)
        assert client.stderr is not None
        stderr = client.stderr.read()
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)
    assert client.returncode != 0, stderr
    assert [(d["name"], d["state"]) for d in _deliveries(srv)] == [("fast.csv", "published")]
    app = srv.app()
    aborts = [r for r in app.audit.records() if r.event == "upload.abort"]
    assert len(aborts) == 1 and aborts[0].actor == "agency-2" and aborts[0].detail["name"] == "slow.csv"
    assert "still has a list waiting: 'fast.csv'" in aborts[0].detail["error"]
    assert app.db.query("SELECT * FROM uploads") == [] and list((srv.data_dir / "tmp").glob("*.part")) == []
    _one_set_of_sms(srv, twilio, "fast.csv.age")


def test_paramiko_sees_the_message_at_close_and_open_and_a_correction_still_works(srv, twilio, tmp_path):
    with srv.paramiko("agency") as sftp:
        handle = sftp.open("/hasselt/mine.csv", "wb")
        handle.write(b"mine\n")
        handle.flush()
        (tmp_path / "theirs.csv").write_bytes(b"theirs\n")
        srv.sftp("agency-2", f"put {tmp_path / 'theirs.csv'} /hasselt/theirs.csv\n")   # OpenSSH publishes
        # paramiko's SFTPFile.close() swallows a failed CLOSE, so send the CLOSE request itself
        with pytest.raises(PermissionError) as refused:
            sftp._request(CMD_CLOSE, handle.handle)
        handle._closed = True
        message = str(refused.value)
        assert "hasselt still has a list waiting: 'theirs.csv', published " in message
        assert "under the same name 'theirs.csv'" in message and "rm /hasselt/theirs.csv" in message

        # a new upload of another name is refused at open, with the same message
        with pytest.raises(PermissionError, match="still has a list waiting: 'theirs.csv'"):
            sftp.open("/hasselt/mine.csv", "wb")
        # OpenSSH only says "Permission denied", but fails too
        (tmp_path / "mine.csv").write_bytes(b"mine\n")
        again = srv.sftp("agency-2", f"put {tmp_path / 'mine.csv'} /hasselt/mine.csv\n", check=False)
        assert again.returncode != 0 and "Permission denied" in again.stderr
        refusals = [r for r in srv.app().audit.records() if r.event == "upload.refused"]
        assert [r.actor for r in refusals] == ["agency", "agency-2"]
        assert all("'theirs.csv'" in r.detail["error"] for r in refusals)

        _one_set_of_sms(srv, twilio, "theirs.csv.age")
        first = twilio.messages

        # the same name from the other sender is a correction: replaces it, revokes the old key
        with sftp.open("/hasselt/theirs.csv", "wb") as corrected:
            corrected.write(b"theirs, corrected\n")
    rows = _deliveries(srv)
    assert [(d["name"], d["state"], d["removed_reason"]) for d in rows] == [
        ("theirs.csv", "removed", "replaced"), ("theirs.csv", "published", None)]
    assert [r[0] for r in srv.app().db.query("SELECT delivery_id FROM secrets")] == [rows[1]["id"]]
    twilio.wait_for_messages(len(first) + len(PHONES), timeout=WAIT)


def test_simultaneous_uploads_exactly_one_waits(srv, twilio, tmp_path):
    """OpenSSH and paramiko start at the same moment: whatever the interleaving, one file waits and
    the other client fails (at open or at close)."""
    data = b"x;" * 200_000
    (tmp_path / "een.csv").write_bytes(data)
    start = threading.Barrier(2, timeout=WAIT)
    outcome: dict[str, Any] = {}

    def openssh() -> None:
        start.wait()
        result = srv.sftp("agency", f"put {tmp_path / 'een.csv'} /hasselt/een.csv\n", check=False)
        outcome["openssh"] = result.returncode == 0

    def paramiko_put() -> None:
        with srv.paramiko("agency-2") as sftp:
            start.wait()
            try:
                handle = sftp.open("/hasselt/twee.csv", "wb")
                handle.write(data)
                handle.flush()
                sftp._request(CMD_CLOSE, handle.handle)
                handle._closed = True
                outcome["paramiko"] = True
            except PermissionError as refused:
                outcome["paramiko"] = False
                outcome["message"] = str(refused)

    threads = [threading.Thread(target=openssh), threading.Thread(target=paramiko_put)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert sorted(outcome.get(k) for k in ("openssh", "paramiko")) == [False, True], outcome
    [waiting] = [d for d in _deliveries(srv) if d["state"] == "published"]
    assert len(_deliveries(srv)) == 1
    assert waiting["name"] == ("een.csv" if outcome["openssh"] else "twee.csv")
    if not outcome["paramiko"]:
        assert "still has a list waiting: 'een.csv'" in outcome["message"]
    _one_set_of_sms(srv, twilio, waiting["name"] + ".age")

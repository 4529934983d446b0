"""Signed receipts (docs/receipts.md): a real collection with OpenSSH sftp gives the sender a
receipt in /receipts/ that stock `ssh-keygen -Y verify` accepts and rejects once a byte changes;
expiry, replacement and withdrawal give receipts too; receipts are mailed; keys are audited."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from sluis.server.cli.common import operator
from sluis.server.core.deliveries import fetch
from sluis.server.core.session import Session
from sluis.server.errors import InvalidInput
from sluis.server.formats import sshsig
from tests.support.clients_extra import audit, blob, deliveries
from tests.support.library import download, sluis, upload
from tests.support.smtp_standin import SmtpStandIn
from tests.support.waiting import wait_until

DATA = blob(150_001, seed=11)
SENDER_MAIL = "team@agentschap.test"


@pytest.fixture
def smtp() -> Iterator[SmtpStandIn]:
    with SmtpStandIn() as standin:
        yield standin


def ssh_keygen_verify(allowed: Path, receipt: Path, signature: Path) -> subprocess.CompletedProcess[bytes]:
    with receipt.open("rb") as stdin:
        return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "sluis",
                               "-n", "sluis-receipt", "-s", str(signature)], stdin=stdin, capture_output=True,
                              timeout=30)


def allowed_signers(config: Path, tmp_path: Path) -> Path:
    result = sluis(config, "receipt", "allowed-signers")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('sluis namespaces="sluis-receipt" ssh-ed25519 ')
    path = tmp_path / "allowed_signers"
    path.write_text(result.stdout)
    return path


def test_collection_receipt_over_sftp_verifies_with_ssh_keygen_and_is_mailed(make_server, smtp, tmp_path):
    server = make_server(overrides={
        "email": {"enabled": True, "host": smtp.host, "port": smtp.port, "starttls": False,
                  "sender": "sluis@agentschap.test"},
        "incidents": {"interval": "1s"}})
    server.standard()
    server.app().directory.add_user(operator(), "agency-mail", role="sender", email=SENDER_MAIL,
                                    keys=[(server.accounts["agency"].pub.read_text(), "copy")])
    server.accounts["agency-mail"] = server.accounts["agency"]
    server.start()
    source = tmp_path / "lijst.csv"
    source.write_bytes(DATA)
    server.sftp("agency-mail", f"put {source} /genk/lijst.csv\n")
    server.passphrase("lijst.csv.age")
    assert server.sftp("agency-mail", "ls /receipts\n").stdout.strip().endswith("ls /receipts")
    got = tmp_path / "got"
    got.mkdir()
    server.sftp("genk-clerk", f"get lijst.csv.age {got}/lijst.csv.age\n")
    [delivery] = deliveries(server)
    assert delivery["state"] == "collected"

    # the sender finds it read-only in /receipts, by delivery id
    listing = server.sftp("agency-mail", "ls -l /receipts\n").stdout
    name = f"{delivery['id']}.json"
    assert name in listing and f"{name}.sig" in listing
    mine = tmp_path / "mine"
    mine.mkdir()
    server.sftp("agency-mail", f"get /receipts/{name} {mine}/{name}\nget /receipts/{name}.sig {mine}/{name}.sig\n")
    receipt, signature = mine / name, mine / f"{name}.sig"
    body = json.loads(receipt.read_bytes())
    assert body["outcome"] == "collected" and body["delivery"] == delivery["id"] and body["tenant"] == "genk"
    assert body["sender"] == "agency-mail" and body["collected_by"] == "genk-clerk"
    assert body["collected_from"].startswith("127.0.0.1:") and body["collected_at"] == delivery["collected_at"]
    assert body["plain_sha256"] == hashlib.sha256(DATA).hexdigest() and body["plain_size"] == len(DATA)
    stored = (got / "lijst.csv.age").read_bytes()
    assert body["stored_sha256"] == hashlib.sha256(stored).hexdigest() and body["stored_size"] == len(stored)
    [collect] = audit(server, "delivery.collect")
    assert (body["audit_seq"], body["audit_hash"]) == (collect["seq"], collect["hash"])

    allowed = allowed_signers(server.config, tmp_path)
    good = ssh_keygen_verify(allowed, receipt, signature)
    assert good.returncode == 0, good.stderr
    assert b'Good "sluis-receipt" signature for sluis' in good.stdout
    assert sluis(server.config, "receipt", "verify", str(receipt)).returncode == 0
    standalone = sluis(Path("/nonexistent.toml"), "receipt", "verify", str(receipt), str(signature),
                       "--allowed-signers", str(allowed))
    assert standalone.returncode == 0 and "Good receipt" in standalone.stdout, standalone.stderr

    # one changed byte: OpenSSH and sluis both refuse it
    data = bytearray(receipt.read_bytes())
    at = data.index(b"genk-clerk")
    data[at] = ord("x")
    forged = tmp_path / "forged.json"
    forged.write_bytes(bytes(data))
    assert ssh_keygen_verify(allowed, forged, signature).returncode != 0
    bad = sluis(server.config, "receipt", "verify", str(forged), str(signature))
    assert bad.returncode == 1 and "BAD receipt" in bad.stderr

    # read-only: no write, no delete; a sender still reads no stored file
    refused = server.sftp("agency-mail", f"-rm /receipts/{name}\n-put {source} /receipts/x.json\n"
                          f"-get /genk/lijst.csv {tmp_path}/no\n", check=False)
    assert "receipts are read-only" in server.log
    assert sluis(server.config, "receipt", "show", delivery["id"]).stdout.encode() == receipt.read_bytes()
    assert refused.stderr.count("Permission denied") == 2 and not (tmp_path / "no").exists()
    assert "receipts" not in server.sftp("genk-clerk", "ls\n").stdout
    other = server.sftp("agency", "ls /receipts\n").stdout
    assert other.strip().endswith("sftp> ls /receipts")                      # another sender sees none
    taken = server.sftp("agency", f"-get /receipts/{name} {tmp_path}/theirs\n", check=False)
    assert "not found" in taken.stderr and not (tmp_path / "theirs").exists()

    # mailed to the sender: the JSON line and the signature verify as they arrived
    [mail] = smtp.wait_for_messages(1, timeout=30)
    assert list(mail.rcpt_tos) == [SENDER_MAIL] and "Ontvangstbewijs" in mail.message.get("Subject")
    text = mail.body.replace("\r\n", "\n")   # mail travels with CRLF; the receipt is signed with LF
    line = re.search(r"--- receipt ---\n(.*\n)--- end receipt ---", text).group(1)
    armored = text[text.index("-----BEGIN SSH SIGNATURE-----"):]
    (tmp_path / "mailed.json").write_text(line)
    (tmp_path / "mailed.json.sig").write_text(armored)
    assert (tmp_path / "mailed.json").read_bytes() == receipt.read_bytes()
    assert ssh_keygen_verify(allowed, tmp_path / "mailed.json", tmp_path / "mailed.json.sig").returncode == 0
    issued = audit(server, "receipt.issue")
    assert [(r["delivery"], r["detail"]["outcome"], r["detail"]["mailed"]) for r in issued] == [
        (delivery["id"], "collected", True)]
    assert issued[0]["detail"]["sha256"] == hashlib.sha256(receipt.read_bytes()).hexdigest()


def _verify(app: Any, receipt: Any) -> None:
    key = sshsig.parse_public_line(app.receipts.public_line())
    sshsig.verify(receipt.signature, receipt.body, "sluis-receipt", [key])


def test_expiry_replacement_and_withdrawal_give_receipts_with_their_reason(lib):
    srv, app, clock = lib
    first = upload(app, data=b"v1\n")
    second = upload(app, data=b"v2\n")                  # a correction replaces the uncollected first
    replaced = app.receipts.get(first.id)
    assert replaced is not None and json.loads(replaced.body)["outcome"] == "replaced"
    _verify(app, replaced)
    assert app.receipts.get(second.id) is None
    clock.advance(seconds=app.settings.retention.expire_after + 1)
    report = app.janitor.run_once()
    assert report.expired == [second.id]
    expired = json.loads(app.receipts.get(second.id).body)
    assert expired["outcome"] == "expired" and expired["collected_by"] is None
    assert expired["ended_at"] == fetch(app.db, "id = ?", (second.id,))[0].removed_at
    _verify(app, app.receipts.get(second.id))
    # one receipt per delivery: removing a collected delivery later issues none
    app.dropbox.policy = _AlwaysAdmit()
    third = upload(app, data=b"v3\n")
    assert download(app, third)
    assert json.loads(app.receipts.get(third.id).body)["outcome"] == "collected"
    clock.advance(seconds=app.settings.retention.collected_grace + 1)
    app.janitor.run_once()
    assert [r.event for r in app.audit.records() if r.delivery == third.id].count("receipt.issue") == 1
    fourth = upload(app, data=b"v4\n")
    session = Session(user=app.directory.user("agency"), source="test")
    app.dropbox.remove(fetch(app.db, "id = ?", (fourth.id,))[0], "withdrawn", actor=session.actor)
    assert json.loads(app.receipts.get(fourth.id).body)["outcome"] == "withdrawn"
    # key destruction has its own audit record, once per delivery
    destroyed = [r.delivery for r in app.audit.records() if r.event == "key.destroy"]
    assert sorted(destroyed) == sorted([first.id, second.id, third.id, fourth.id])
    assert app.audit.verify().ok


class _AlwaysAdmit:
    def admit(self, conn, tenant, delivery_id=None, name=None):
        return []


def test_upgraded_setup_gets_a_receipt_key_at_start_and_it_is_audited(make_server):
    server = make_server().standard()
    key = server.data_dir / "receipt.key"
    key.unlink()
    (server.data_dir / "receipt.key.pub").unlink()
    server.start()
    server.wait_for("created the receipt signing key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    [created] = audit(server, "receipt.key.create")
    assert created["detail"]["key"].startswith("SHA256:")
    server.stop()
    server.start()                                   # a second start keeps the key
    assert len(audit(server, "receipt.key.create")) == 1


def test_a_tenant_cannot_be_named_receipts(lib):
    srv, app, clock = lib
    with pytest.raises(InvalidInput, match="reserved"):
        app.directory.add_tenant(operator(), "receipts", phones=("+32470123456",))


def test_sshsig_matches_ssh_keygen_byte_for_byte(tmp_path):
    """ed25519 is deterministic: our armor must equal what `ssh-keygen -Y sign` writes."""
    from sluis.server.core.receiptkey import create_key_file

    key = create_key_file(tmp_path / "k")
    message = tmp_path / "m"
    message.write_bytes(b'{"a":1}\n')
    done = subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(tmp_path / "k"), "-n", "sluis-receipt",
                           str(message)], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.sig").read_text() == sshsig.sign(key, "sluis-receipt", message.read_bytes())
    with pytest.raises(sshsig.SignatureError, match="namespace"):
        sshsig.verify((tmp_path / "m.sig").read_text(), message.read_bytes(), "other", [key.public_key()])


def test_keygen_for_root_owned_setups_and_the_systemd_credential(lib, tmp_path, monkeypatch):
    srv, app, clock = lib
    (srv.data_dir / "receipt.key").unlink()
    (srv.data_dir / "receipt.key.pub").unlink()
    made = sluis(srv.config, "receipt", "keygen")
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE((srv.data_dir / "receipt.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((srv.data_dir / "receipt.key.pub").stat().st_mode) == 0o644
    fingerprint = re.search(r"SHA256:[A-Za-z0-9+/]+", made.stdout).group(0)
    again = sluis(srv.config, "receipt", "keygen")
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert not [r for r in audit(srv, "receipt.key.create") if r["detail"]["key"] == fingerprint]

    delivery = upload(app)
    assert download(app, delivery)
    [change] = [r for r in app.audit.records() if r.event == "receipt.key.change"]
    assert change.detail["key"] == fingerprint and json.loads(app.receipts.get(delivery.id).body)["key"] == fingerprint

    # the systemd credential wins over the file (a fresh process: the key is loaded once)
    from sluis.server.core.receiptkey import create_key_file, load_or_create

    creds = tmp_path / "creds"
    creds.mkdir()
    credential = create_key_file(creds / "sluis-receipt-key")
    loaded = load_or_create(srv.data_dir / "secret.key", str(creds))
    assert loaded.fingerprint == sshsig.fingerprint(credential.public_key()) != fingerprint
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    from sluis.config import load_settings
    from sluis.server.app import build_app

    other = build_app(load_settings(srv.config, {}), clock=clock)
    try:
        assert other.receipts.public_line() == sshsig.public_line(credential.public_key())
    finally:
        other.close()


def test_an_unsafe_receipt_key_is_refused_with_what_to_do(lib):
    from sluis.server.core.receiptkey import ReceiptKeyError, load_or_create

    srv, app, clock = lib
    (srv.data_dir / "receipt.key").chmod(0o644)
    with pytest.raises(ReceiptKeyError, match="chmod 600"):
        load_or_create(srv.data_dir / "secret.key", None)
    (srv.data_dir / "receipt.key").chmod(0o600)
    (srv.data_dir / "receipt.key").write_text("not a key\n")
    with pytest.raises(ReceiptKeyError, match="not an unencrypted OpenSSH private key"):
        load_or_create(srv.data_dir / "secret.key", None)


def test_a_correction_over_sftp_leaves_a_replaced_receipt_that_verifies(server, tmp_path):
    source = tmp_path / "lijst.csv"
    source.write_bytes(b"naam;voornaam\nA;B\n")
    server.sftp("agency", f"put {source} /genk/lijst.csv\n")
    source.write_bytes(b"naam;voornaam\nA;C\n")
    server.sftp("agency", f"put {source} /genk/lijst.csv\n")           # the correction replaces it
    first, second = deliveries(server)
    assert (first["state"], first["removed_reason"], second["state"]) == ("removed", "replaced", "published")
    listing = server.sftp("agency", "ls /receipts\n").stdout
    assert f"{first['id']}.json" in listing and second["id"] not in listing
    server.sftp("agency", f"get /receipts/{first['id']}.json {tmp_path}/r.json\n"
                          f"get /receipts/{first['id']}.json.sig {tmp_path}/r.json.sig\n")
    body = json.loads((tmp_path / "r.json").read_bytes())
    assert (body["outcome"], body["collected_by"], body["ended_at"]) == ("replaced", None, first["removed_at"])
    [removal] = [r for r in audit(server, "delivery.remove") if r["delivery"] == first["id"]]
    assert body["audit_hash"] == removal["hash"] and removal["detail"]["by"] == second["id"]
    verified = ssh_keygen_verify(allowed_signers(server.config, tmp_path), tmp_path / "r.json", tmp_path / "r.json.sig")
    assert verified.returncode == 0, verified.stderr


def test_expiry_in_a_running_server_leaves_an_expired_receipt(make_server, tmp_path):
    server = make_server(overrides={"retention": {"expire_after": "2s", "interval": "1s"}}).standard().start()
    source = tmp_path / "lijst.csv"
    source.write_bytes(b"naam;voornaam\nA;B\n")
    server.sftp("agency", f"put {source} /genk/lijst.csv\n")
    [delivery] = deliveries(server)
    wait_until(lambda: server.app().receipts.get(delivery["id"]), "the expiry receipt", 30)
    server.sftp("agency", f"get /receipts/{delivery['id']}.json {tmp_path}/r.json\n"
                          f"get /receipts/{delivery['id']}.json.sig {tmp_path}/r.json.sig\n")
    body = json.loads((tmp_path / "r.json").read_bytes())
    assert body["outcome"] == "expired" and body["collected_at"] is None
    assert ssh_keygen_verify(allowed_signers(server.config, tmp_path), tmp_path / "r.json",
                             tmp_path / "r.json.sig").returncode == 0

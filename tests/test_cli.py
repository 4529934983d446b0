"""The `sluis` command for operators: tenants, users and their keys, with clear errors; every
subcommand documents itself with --help."""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import subprocess

import asyncssh
import pytest

from sluis.server.cli.main import build_parser, main
from sluis.server.cli.init import init_setup
from tests.support.library import SLUIS, sluis


@pytest.fixture
def config(tmp_path):
    return init_setup(tmp_path / "setup")


def make_key(tmp_path, name: str):
    key = asyncssh.generate_private_key("ssh-ed25519", comment=name)
    pub = tmp_path / f"{name}.pub"
    pub.write_bytes(key.export_public_key("openssh"))
    return pub, key.get_fingerprint("sha256")


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def tenants(config) -> dict[str, dict]:
    return {t["name"]: t for t in json.loads(ok(sluis(config, "tenant", "list", "--json")).stdout)}


def users(config) -> dict[str, dict]:
    return {u["name"]: u for u in json.loads(ok(sluis(config, "user", "list", "--json")).stdout)}


# --- tenants -----------------------------------------------------------------------------------------
def test_tenant_add_list_show_set_disable(config):
    added = ok(sluis(config, "tenant", "add", "genk", "--nis", "71016", "--phone", "0470 12 34 56",
                     "--phone", "+32471234567", "--email", "info@genk.be"))
    assert "added tenant genk (format age, phones +32470123456, +32471234567)" in added.stdout
    assert "sluis tenant protocol genk" in added.stdout          # tells what to do next
    ok(sluis(config, "tenant", "add", "gent", "--phone", "+32472000000", "--format", "zip"))

    listed = tenants(config)
    assert set(listed) == {"genk", "gent"}
    assert listed["genk"]["phones"] == ["+32470123456", "+32471234567"]
    assert (listed["genk"]["nis"], listed["genk"]["email"], listed["genk"]["format"]) == \
        ("71016", "info@genk.be", "age")
    assert listed["gent"]["format"] == "zip" and listed["gent"]["active"] is True
    table = ok(sluis(config, "tenant", "list")).stdout.splitlines()
    assert table[0].split() == ["NAME", "NIS", "FORMAT", "ACTIVE", "PHONES", "EMAIL", "DPO"]
    assert any(line.startswith("genk") and "71016" in line and "yes" in line for line in table)

    show = ok(sluis(config, "tenant", "show", "genk")).stdout
    assert "tenant:    genk" in show and "NIS 71016" in show
    assert "phones:    +32470123456, +32471234567" in show
    assert "protocol:  none registered" in show
    assert "delivery:  refused: no data-sharing protocol is registered for genk" in show

    ok(sluis(config, "tenant", "set", "genk", "--phone", "+32479999999", "--email", "", "--format", "zip"))
    changed = tenants(config)["genk"]
    assert (changed["phones"], changed["email"], changed["format"]) == (["+32479999999"], None, "zip")
    ok(sluis(config, "tenant", "set", "genk", "--email", "new@genk.be"))
    assert tenants(config)["genk"]["phones"] == ["+32479999999"]     # untouched when not given
    ok(sluis(config, "tenant", "set", "genk", "--dpo-name", "An Peeters", "--dpo-email", "dpo@genk.be",
             "--dpo-phone", "089 12 34 56"))
    dpo = tenants(config)["genk"]
    assert (dpo["dpo_name"], dpo["dpo_email"], dpo["dpo_phone"]) == ("An Peeters", "dpo@genk.be", "+3289123456")
    assert "DPO:       An Peeters <dpo@genk.be> +3289123456" in ok(sluis(config, "tenant", "show", "genk")).stdout
    bad = sluis(config, "tenant", "set", "genk", "--dpo-email", "not-an-address")
    assert bad.returncode == 1 and "--dpo-email" in bad.stderr

    assert "disabled tenant gent" in ok(sluis(config, "tenant", "disable", "gent")).stdout
    assert tenants(config)["gent"]["active"] is False
    shown = ok(sluis(config, "tenant", "show", "gent")).stdout
    assert "active:    no" in shown and "delivery:  refused: gent is disabled" in shown

    events = [json.loads(line)["event"] for line in
              ok(sluis(config, "audit", "export", "--json", "--tenant", "genk")).stdout.splitlines()]
    assert events == ["tenant.add", "tenant.change", "tenant.change", "tenant.change"]


def test_tenant_errors(config):
    ok(sluis(config, "tenant", "add", "genk", "--phone", "+32470123456"))
    again = sluis(config, "tenant", "add", "genk", "--phone", "+32470123456")
    assert again.returncode == 1 and "tenant 'genk' exists already" in again.stderr
    bad_name = sluis(config, "tenant", "add", "Genk City", "--phone", "+32470123456")
    assert bad_name.returncode == 1 and "lowercase slug" in bad_name.stderr
    bad_nis = sluis(config, "tenant", "add", "hasselt", "--nis", "7101", "--phone", "+32470123456")
    assert bad_nis.returncode == 1 and "five digits" in bad_nis.stderr
    missing = sluis(config, "tenant", "show", "nowhere")
    assert missing.returncode == 1 and "no tenant named 'nowhere'" in missing.stderr
    no_phone = sluis(config, "tenant", "add", "hasselt")
    assert no_phone.returncode == 2 and "--phone" in no_phone.stderr    # argparse: required
    assert set(tenants(config)) == {"genk"}


INVALID_PHONES = [("+32 12", "too short"), ("banana", "not a phone number"),
                  ("+999 123456789", "country code"), ("+3247012345678", "")]


def test_invalid_phone_is_a_clear_error(config):
    for number, reason in INVALID_PHONES:
        result = sluis(config, "tenant", "add", "genk", "--phone", number)
        assert result.returncode == 1, number
        assert f"phone number {number!r}" in result.stderr and "invalid" in result.stderr
        assert reason in result.stderr
        assert "Traceback" not in result.stderr
    assert tenants(config) == {}


def test_landline_number_gives_warning(config):
    result = ok(sluis(config, "tenant", "add", "hasselt", "--phone", "011 23 45 67"))
    assert "warning: +3211234567 looks like a landline number, not a mobile number" in result.stderr
    assert tenants(config)["hasselt"]["phones"] == ["+3211234567"]
    mobile = ok(sluis(config, "tenant", "add", "genk", "--phone", "+32470123456"))
    assert "warning" not in mobile.stderr
    invalid_set = sluis(config, "tenant", "set", "genk", "--phone", "12")
    assert invalid_set.returncode == 1 and "invalid" in invalid_set.stderr
    assert tenants(config)["genk"]["phones"] == ["+32470123456"]


# --- users -------------------------------------------------------------------------------------------
def test_user_add_and_role_rules(config, tmp_path):
    ok(sluis(config, "tenant", "add", "genk", "--phone", "+32470123456"))
    pub, fingerprint = make_key(tmp_path, "clerk")
    no_tenant = sluis(config, "user", "add", "clerk", "--role", "recipient", "--key", str(pub))
    assert no_tenant.returncode == 1
    assert "a recipient belongs to exactly one --tenant" in no_tenant.stderr
    sender_with_tenant = sluis(config, "user", "add", "agency", "--role", "sender", "--tenant", "genk",
                               "--key", str(pub))
    assert sender_with_tenant.returncode == 1 and "a sender to none" in sender_with_tenant.stderr
    unknown_tenant = sluis(config, "user", "add", "clerk", "--role", "recipient", "--tenant", "nowhere",
                           "--key", str(pub))
    assert unknown_tenant.returncode == 1 and "no tenant named 'nowhere'" in unknown_tenant.stderr
    no_credentials = sluis(config, "user", "add", "clerk", "--role", "recipient", "--tenant", "genk")
    assert no_credentials.returncode == 1 and "needs at least one --key or a password" in no_credentials.stderr
    not_a_key = tmp_path / "junk.pub"
    not_a_key.write_text("ssh-ed25519 AAAAnot-base64\n")
    junk = sluis(config, "user", "add", "clerk", "--role", "recipient", "--tenant", "genk", "--key", str(not_a_key))
    assert junk.returncode == 1 and "not an SSH public key" in junk.stderr
    short = sluis(config, "user", "add", "script", "--role", "sender", "--password-stdin", input="short\n")
    assert short.returncode == 1 and "at least 12 characters" in short.stderr
    assert users(config) == {}

    added = ok(sluis(config, "user", "add", "genk-clerk", "--role", "recipient", "--tenant", "genk",
                     "--key", str(pub)))
    assert "added recipient genk-clerk for genk" in added.stdout
    ok(sluis(config, "user", "add", "script", "--role", "sender", "--password-stdin",
             "--email", "ops@agency.be", input="a long enough password\n"))
    listed = users(config)
    assert listed["genk-clerk"] == {"name": "genk-clerk", "role": "recipient", "tenant": "genk",
                                    "active": True, "keys": [fingerprint], "password": False,
                                    "function": "", "key_expiry": {}}
    assert listed["script"]["role"] == "sender" and listed["script"]["tenant"] is None
    assert listed["script"]["password"] is True and listed["script"]["keys"] == []
    assert "genk-clerk" in ok(sluis(config, "tenant", "show", "genk")).stdout.split("recipients:")[1]
    dup = sluis(config, "user", "add", "genk-clerk", "--role", "recipient", "--tenant", "genk", "--key", str(pub))
    assert dup.returncode == 1 and "exists already" in dup.stderr


def test_user_key_add_and_remove(config, tmp_path):
    first, fp1 = make_key(tmp_path, "first")
    second, fp2 = make_key(tmp_path, "second")
    ok(sluis(config, "user", "add", "agency", "--role", "sender", "--key", str(first)))
    assert f"added {fp2} to agency" in ok(sluis(config, "user", "key", "add", "agency", str(second))).stdout
    assert users(config)["agency"]["keys"] == [fp1, fp2]
    twice = sluis(config, "user", "key", "add", "agency", str(second))
    assert twice.returncode == 1 and "registered for this user already" in twice.stderr

    assert f"removed {fp1} from agency" in ok(sluis(config, "user", "key", "remove", "agency", str(first))).stdout
    assert users(config)["agency"]["keys"] == [fp2]
    gone = sluis(config, "user", "key", "remove", "agency", str(first))
    assert gone.returncode == 1 and "is registered for 'agency'" in gone.stderr
    missing_file = sluis(config, "user", "key", "add", "agency", str(tmp_path / "nope.pub"))
    assert missing_file.returncode == 1 and "cannot read key file" in missing_file.stderr
    nobody = sluis(config, "user", "key", "add", "nobody", str(first))
    assert nobody.returncode == 1 and "no user named 'nobody'" in nobody.stderr
    events = [json.loads(line)["event"] for line in ok(sluis(config, "audit", "export", "--json")).stdout.splitlines()]
    assert events.count("user.key.add") == 1 and events.count("user.key.remove") == 1


def test_user_disable_and_removed_key_refuse_login(make_server):
    srv = make_server().standard().start()
    assert srv.sftp("genk-clerk", "ls\n", check=False).returncode == 0
    assert srv.sftp("agency", "ls\n", check=False).returncode == 0
    result = ok(sluis(srv.config, "user", "disable", "genk-clerk"))
    assert "disabled user genk-clerk" in result.stdout
    refused = srv.sftp("genk-clerk", "ls\n", check=False)
    assert refused.returncode != 0
    assert "Permission denied" in refused.stderr or "Connection closed" in refused.stderr
    assert users(srv.config)["genk-clerk"]["active"] is False
    # a removed key no longer logs in either; other users are unaffected
    ok(sluis(srv.config, "user", "key", "remove", "agency", str(srv.accounts["agency"].pub)))
    assert srv.sftp("agency", "ls\n", check=False).returncode != 0
    assert srv.sftp("gent-clerk", "ls\n", check=False).returncode == 0


def test_status_lists_deliveries_and_standing(make_server, tmp_path):
    srv = make_server({"crypto": {"scrypt_log_n": 10}}).standard().start()
    (tmp_path / "lijst.csv").write_bytes(b"a;b\n")
    srv.sftp("agency", f"put {tmp_path / 'lijst.csv'} /genk/lijst.csv\n")
    text = ok(sluis(srv.config, "status")).stdout
    assert "genk/lijst.csv.age  published" in text
    assert "sms   +32470123456" in text
    data = json.loads(ok(sluis(srv.config, "status", "--json")).stdout)
    [row] = data["deliveries"]
    assert (row["tenant"], row["file"], row["sender"], row["state"]) == ("genk", "lijst.csv.age", "agency", "published")
    assert [m["to"] for m in row["messages"] if m["kind"] == "sms"] == ["+32470123456"]
    standing = {t["tenant"]: t["delivery"] for t in data["tenants"]}
    assert standing == {"genk": "a correction would replace the pending delivery", "gent": "may receive a list now"}
    [node] = data["nodes"]                 # the running server: a live node, default name the host's
    assert (node["node"], node["live"], node["uploads"]) == (socket.gethostname(), True, 0)
    assert node["process"].split(":")[1] == str(srv.process.pid)
    assert re.search(rf"{re.escape(socket.gethostname())}\s+live\s+0\s", text)


def test_operator_removes_a_delivery_from_a_running_server(make_server, tmp_path):
    """`sluis delivery remove`: the file is gone at once for the running server, a download in
    progress reads no more, the key cannot be sent again, and the audit log and the receipt say
    that an operator removed it, who, and why. Unknown and already removed deliveries are clear
    errors."""
    srv = make_server({"crypto": {"scrypt_log_n": 10}}).standard().start()
    (tmp_path / "lijst.csv").write_bytes(random.Random(7).randbytes(2 * 1024 * 1024))
    srv.sftp("agency", f"put {tmp_path / 'lijst.csv'} /genk/lijst.csv\n")
    [row] = json.loads(ok(sluis(srv.config, "status", "--json")).stdout)["deliveries"]
    with srv.paramiko("genk-clerk") as clerk:
        handle = clerk.open("/lijst.csv.age", "rb")
        assert len(handle.read(32768)) == 32768               # a download in progress
        done = ok(sluis(srv.config, "delivery", "remove", row["id"], "--reason", "verkeerde gemeente"))
        assert f"removed genk/lijst.csv.age ({row['id']})" in done.stdout
        with pytest.raises(OSError, match="withdrawn, replaced or removed"):
            handle.read(32768)
        assert "lijst.csv.age" not in clerk.listdir("/")
    [gone] = json.loads(ok(sluis(srv.config, "status", "--all", "--json")).stdout)["deliveries"]
    assert (gone["state"], gone["removed"]) == ("removed", "admin")
    assert not list((srv.data_dir / "boxes").rglob("*.age"))
    resend = sluis(srv.config, "key", "resend", row["id"])
    assert resend.returncode == 1 and "destroyed" in resend.stderr
    records = [json.loads(line) for line in ok(sluis(srv.config, "audit", "export", "--json")).stdout.splitlines()]
    [removal] = [r for r in records if r["event"] == "delivery.remove"]
    assert removal["actor"].startswith("admin:") and removal["source"].startswith("cli:")
    assert (removal["detail"]["reason"], removal["detail"]["why"]) == ("admin", "verkeerde gemeente")
    assert json.loads(ok(sluis(srv.config, "receipt", "show", row["id"])).stdout)["outcome"] == "admin"
    ok(sluis(srv.config, "audit", "verify"))

    again = sluis(srv.config, "delivery", "remove", row["id"], "--reason", "nogmaals")
    assert again.returncode == 1 and "already removed (admin)" in again.stderr
    unknown = sluis(srv.config, "delivery", "remove", "d-nonexistent", "--reason", "x")
    assert unknown.returncode == 1 and "no delivery 'd-nonexistent'" in unknown.stderr


# --- help ----------------------------------------------------------------------------------------------
def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.extend(_command_paths(sub, prefix + (name,)))
    return paths


def test_every_subcommand_has_help(capsys):
    paths = _command_paths(build_parser())
    expected = {("init",), ("serve",), ("status",), ("tenant", "add"), ("tenant", "set"), ("tenant", "list"),
                ("tenant", "show"), ("tenant", "disable"), ("tenant", "protocol"), ("user", "add"),
                ("user", "list"), ("user", "disable"), ("user", "key", "add"), ("user", "key", "remove"),
                ("audit", "verify"), ("audit", "export"), ("audit", "checkpoint"), ("audit", "public-key"),
                ("janitor", "run"), ("key", "resend"),
                ("delivery", "allow"), ("delivery", "remove")}
    assert expected <= set(paths)
    for path in paths:
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        assert done.value.code == 0, path
        out = capsys.readouterr().out
        assert out.startswith("usage: sluis"), path
        if path in expected:
            assert len(out.splitlines()) > 2, path        # a description, not just the usage line


def test_help_through_the_installed_command():
    for args in (["--help"], ["tenant", "protocol", "--help"], ["delivery", "allow", "--help"]):
        result = subprocess.run([*SLUIS, *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stdout.startswith("usage: sluis"), args
    protocol = subprocess.run([*SLUIS, "tenant", "protocol", "--help"], capture_output=True, text=True, timeout=30)
    assert "--notice" in protocol.stdout and "twelve months" in protocol.stdout


def test_admin_commands_do_not_need_the_secret_key_but_serve_does(tmp_path):
    """Operators administer as the service user, which cannot read the root-owned secret key."""
    config = init_setup(tmp_path / "setup")
    (tmp_path / "setup" / "secret.key").unlink()
    result = sluis(config, "tenant", "add", "genk", "--phone", "+32470123456")
    assert result.returncode == 0, result.stderr
    assert sluis(config, "status").returncode == 0
    served = subprocess.run([*SLUIS, "-c", str(config), "serve"], capture_output=True, text=True, timeout=30)
    assert served.returncode == 1
    assert "secret.key" in served.stderr and "Traceback" not in served.stderr


def test_refused_admin_command_is_audited(tmp_path):
    config = init_setup(tmp_path / "setup")
    result = sluis(config, "tenant", "add", "Genk!", "--phone", "+32470123456")
    assert result.returncode == 1 and "lowercase slug" in result.stderr
    export = sluis(config, "audit", "export", "--json")
    records = [json.loads(line) for line in export.stdout.splitlines()]
    refused = [r for r in records if r["event"] == "cli.refused"]
    assert refused and refused[0]["detail"]["command"] == "tenant add Genk!"
    assert "lowercase slug" in refused[0]["detail"]["error"]

"""Accounts under the protocol: function profiles (art. 4), key expiry (an expired key is refused
by a real client's login), `sluis user review`, one role per account, and admin commands audited
with the operating-system user who ran them."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from datetime import datetime, timedelta, timezone

import asyncssh
import pytest

from sluis.server.core.store import Conflict
from sluis.server.cli.common import operator
from sluis.server.core.directory import Actor
from sluis.server.errors import AlreadyExists, InvalidInput
from tests.support.library import SLUIS, sluis
from tests.support.server import SSH_OPTIONS
from tests.support.waiting import wait_until
from tests.support.pg import both_engines  # noqa: F401  (these tests run on both engines)

ME = pwd.getpwuid(os.geteuid()).pw_name


def test_review_lists_unused_accounts_old_and_expired_keys_and_missing_functions(lib):
    srv, app, clock = lib
    actor = Actor("admin:test")
    app.directory.set_user(actor, "genk-clerk", function="dossierbeheerder inburgering")
    extra = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    app.directory.add_key(actor, "genk-clerk", extra, "extra", expires=clock.now() + timedelta(days=10))
    clock.advance(days=100)
    app.audit.record("auth.success", actor="genk-clerk", tenant="genk", source="127.0.0.1:1", method="publickey")
    rows = {r.user: r for r in app.review.run(unused_days=90, key_age_days=365)}
    assert set(rows) == {"agency", "genk-clerk", "gent-clerk"}
    assert any(f.startswith("never-used") for f in rows["agency"].findings)
    assert any(f.startswith("no-function") for f in rows["agency"].findings)
    clerk = rows["genk-clerk"]
    assert clerk.last_login is not None and clerk.function == "dossierbeheerder inburgering"
    assert [f.split(":")[0] for f in clerk.findings] == ["key-expired"]
    old = {r.user: r for r in app.review.run(unused_days=90, key_age_days=30)}
    assert sum(f.startswith("key-old") for f in old["genk-clerk"].findings) == 1
    clock.advance(days=100)
    later = {r.user: r for r in app.review.run(unused_days=90, key_age_days=365)}
    assert any(f.startswith("unused: last login") for f in later["genk-clerk"].findings)
    app.directory.disable_user(actor, "agency")
    assert "agency" not in {r.user for r in app.review.run(unused_days=90, key_age_days=365)}


def test_review_cli_json(lib):
    srv, _app, _clock = lib
    result = sluis(srv.config, "user", "review", "--unused-days", "30", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["user"] for r in rows} == {"agency", "genk-clerk", "gent-clerk"}
    assert all(any(f.startswith("no-function") for f in r["findings"]) for r in rows)
    assert sluis(srv.config, "user", "set", "agency", "--function", "data-analist").returncode == 0
    rows = json.loads(sluis(srv.config, "user", "review", "--json").stdout)
    assert "agency" not in {r["user"] for r in rows}
    assert sluis(srv.config, "user", "review", "--unused-days", "0").returncode == 1


def test_one_account_is_never_both_sender_and_recipient(lib):
    srv, app, _clock = lib
    actor = Actor("admin:test")
    pub = srv.accounts["agency"].pub.read_text()
    with pytest.raises(AlreadyExists):
        app.directory.add_user(actor, "agency", role="recipient", tenant="genk", keys=[(pub, "k")])
    with pytest.raises(InvalidInput):
        app.directory.add_user(actor, "both", role="sender", tenant="genk", keys=[(pub, "k")])
    # the schema itself refuses it, whatever the code above does
    for sql in ("UPDATE users SET role = 'recipient' WHERE name = 'agency'",       # no tenant
                "UPDATE users SET tenant_id = 1 WHERE name = 'agency'",           # a sender with a tenant
                "UPDATE users SET role = 'sender,recipient' WHERE name = 'agency'",
                "INSERT INTO users (name, role, tenant_id, created_at) VALUES ('agency', 'recipient', 1, 'x')"):
        with pytest.raises(Conflict):
            with app.db.writer() as tx:
                tx.execute(sql)


def test_expired_key_no_longer_logs_in(make_server, tmp_path):
    server = make_server().standard().start()
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "short"
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    expires = datetime.now(timezone.utc) + timedelta(seconds=4)
    server.app().directory.add_key(Actor("admin:test"), "genk-clerk",
                                   key.export_public_key("openssh").decode(), "short", expires=expires)

    def login() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sftp", "-b", "-", "-i", str(path), "-P", str(server.port), *SSH_OPTIONS,
                               "genk-clerk@127.0.0.1"], input="ls\n", text=True, capture_output=True, timeout=30)

    assert login().returncode == 0, "the key logs in before it expires"
    wait_until(lambda: datetime.now(timezone.utc) > expires, "the key's expiry", 10, interval=0.2)
    refused = login()
    assert refused.returncode != 0
    fingerprint = key.get_fingerprint("sha256")
    failures = [r for r in server.app().audit.records() if r.event == "auth.failure"]
    assert any(r.detail["key"] == fingerprint and r.actor == "genk-clerk" for r in failures)
    assert server.sftp("genk-clerk", "ls\n").returncode == 0, "the other key still works"


def test_key_expiry_must_lie_ahead(lib):
    srv, _app, _clock = lib
    result = sluis(srv.config, "user", "key", "add", "genk-clerk", str(srv.accounts["gent-clerk"].pub),
                   "--expires", "2001-01-01")
    assert result.returncode == 1 and "passed already" in result.stderr
    ok = sluis(srv.config, "user", "key", "add", "genk-clerk", str(srv.accounts["gent-clerk"].pub),
               "--expires", "2999-01-01")
    assert ok.returncode == 0, ok.stderr
    listed = json.loads(sluis(srv.config, "user", "list", "--json").stdout)
    [clerk] = [u for u in listed if u["name"] == "genk-clerk"]
    assert list(clerk["key_expiry"].values()) == ["2999-01-01T00:00:00.000000Z"]


def test_operator_is_sudo_user_then_login_uid_then_login_name(tmp_path):
    loginuid = tmp_path / "loginuid"
    loginuid.write_text(f"{os.getuid()}\n")
    assert operator({"SUDO_USER": "alice", "USER": "sluis"}, loginuid) == Actor("admin:alice", f"cli:{ME}")
    # under `runuser -u sluis` the environment names the service user; the login uid does not
    assert operator({"USER": "sluis", "LOGNAME": "sluis"}, loginuid).name == f"admin:{pwd.getpwuid(os.getuid()).pw_name}"
    loginuid.write_text("4294967295")  # no login session
    assert operator({"LOGNAME": "bob", "USER": "sluis"}, loginuid).name == "admin:bob"
    assert operator({}, tmp_path / "missing").name == f"admin:{ME}"


STATE_CHANGES = [
    (["tenant", "add", "leuven", "--phone", "+32470555666", "--dpo-name", "D", "--dpo-email", "d@leuven.be"],
     "tenant.add"),
    (["tenant", "set", "leuven", "--dpo-phone", "+32470555777"], "tenant.change"),
    (["tenant", "protocol", "leuven", "--signed", "2024-01-01", "--effective", "2024-02-01"], "protocol.register"),
    (["user", "add", "leuven-clerk", "--role", "recipient", "--tenant", "leuven", "--key", "{pub}",
      "--function", "baliemedewerker", "--email", "c@leuven.be"], "user.add"),
    (["user", "set", "leuven-clerk", "--function", "teamleider"], "user.change"),
    (["user", "key", "add", "leuven-clerk", "{pub2}", "--expires", "2999-01-01"], "user.key.add"),
    (["user", "key", "remove", "leuven-clerk", "{pub2}"], "user.key.remove"),
    (["user", "disable", "leuven-clerk"], "user.disable"),
    (["delivery", "allow", "leuven", "--reason", "tweede lijst"], "policy.allow"),
    (["janitor", "run"], "janitor.run"),
    (["tenant", "disable", "leuven"], "tenant.disable"),
    (["user", "disable", "nobody"], "cli.refused"),
]


def test_every_state_changing_admin_command_is_audited_with_the_person_and_the_effective_user(lib):
    srv, app, _clock = lib
    pubs = {"pub": str(srv.accounts["agency"].pub), "pub2": str(srv.accounts["gent-clerk"].pub)}
    env = {**os.environ, "SUDO_USER": "alice", "USER": "sluis"}
    for argv, event in STATE_CHANGES:
        before, _ = app.audit.head()
        result = subprocess.run([*SLUIS, "-c", str(srv.config), *[a.format(**pubs) for a in argv]],
                                capture_output=True, text=True, timeout=60, env=env)
        records = [r for r in app.audit.records() if r.seq > before]
        assert records, f"{' '.join(argv)} left no audit record ({result.stderr})"
        assert [r.event for r in records][-1] == event, (argv, [r.event for r in records])
        assert all(r.actor == "admin:alice" and r.source == f"cli:{ME}" for r in records), argv
    ack = app.db.query_one("SELECT COUNT(*) FROM audit WHERE event = 'user.add' AND detail LIKE '%\"email\":true%'")
    assert ack[0] == 1, "the e-mail given to user add is part of its audited change"

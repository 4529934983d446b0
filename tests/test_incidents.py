"""Incidents end to end: a brute force from real clients against a real `sluis serve` opens one
incident; the security contact gets the alert by e-mail (SMTP stand-in) and SMS (the real
twilio library against the Twilio stand-in); more attempts update it; `sluis incidents --json`
shows the 24 h deadline; ack; the tenant's DPO is named, and mailed when its phones change;
an alert queued before a crash is sent after the restart."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import timedelta
from typing import Any, Iterator

import asyncssh
import paramiko
import pytest

from sluis.server.cli.common import operator
from sluis.server.core.clock import parse_iso
from tests.support.library import sluis
from tests.support.server import SSH_OPTIONS, SluisServer
from tests.support.smtp_standin import SmtpStandIn
from tests.support.twilio_standin import TwilioStandIn
from tests.support.waiting import wait_until

SOC_MAIL, SOC_PHONE, FROM_NUMBER = "soc@agentschap.test", "+32470000111", "+3228001234"
WAIT = 30


@pytest.fixture
def smtp() -> Iterator[SmtpStandIn]:
    with SmtpStandIn() as standin:
        yield standin


def _server(make_server: Any, smtp: SmtpStandIn, twilio: TwilioStandIn | None, **incidents: Any) -> SluisServer:
    overrides: dict[str, dict[str, Any]] = {
        "email": {"enabled": True, "host": smtp.host, "port": smtp.port, "starttls": False,
                  "sender": "sluis@agentschap.test"},
        "incidents": {"email": SOC_MAIL, "interval": "1s", "auth_failures": 5, **incidents},
        "sms": {"retry_initial": "1s", "retry_max": "2s"},
    }
    env = {}
    if twilio is not None:
        overrides["sms"].update(provider="twilio", account_sid=twilio.account_sid, from_number=FROM_NUMBER,
                                api_base=twilio.url)
        overrides["incidents"]["phone"] = SOC_PHONE
        env["SLUIS_TWILIO_AUTH_TOKEN"] = twilio.auth_token
    server = make_server(overrides=overrides, env=env)
    server.add_tenant("genk")
    server.add_tenant("gent", phones=("+32471234567",))
    server.app().directory.update_tenant(operator(), "genk", dpo_name="An Peeters", dpo_email="dpo@genk.be",
                                         dpo_phone="+32470999888")
    server.add_user("agency", "sender")
    server.add_user("genk-clerk", "recipient", "genk")  # the DPO is told of this one
    server.add_user("gent-clerk", "recipient", "gent")
    return server


def _dpo_mail(smtp: SmtpStandIn) -> Any:
    """The DPO notice about genk-clerk, sent at start; returns it."""
    [mail] = smtp.wait_for_messages(1, timeout=WAIT)
    assert list(mail.rcpt_tos) == ["dpo@genk.be"] and '"genk-clerk" toegevoegd' in mail.body
    return mail


def _wrong_key(server: SluisServer, key_path) -> None:
    result = subprocess.run(["sftp", "-b", "-", "-i", str(key_path), "-P", str(server.port), *SSH_OPTIONS,
                             "genk-clerk@127.0.0.1"], input="ls\n", text=True, capture_output=True, timeout=30)
    assert result.returncode != 0


def _wrong_passwords(server: SluisServer, guesses: int) -> None:
    """paramiko guessing passwords, one connection per guess (as guessing tools spread them)."""
    for n in range(guesses):
        transport = paramiko.Transport(("127.0.0.1", server.port))
        try:
            transport.start_client(timeout=10)
            with pytest.raises(paramiko.AuthenticationException):
                transport.auth_password("genk-clerk", f"Welkom2026!{n}")
        finally:
            transport.close()


def _incidents(server: SluisServer, *extra: str) -> list[dict]:
    result = sluis(server.config, "incidents", "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _failures(server: SluisServer) -> int:
    return sum(1 for r in server.app().audit.records() if r.event == "auth.failure")


def test_brute_force_opens_one_incident_alerted_by_mail_and_sms(make_server, smtp, twilio, tmp_path):
    server = _server(make_server, smtp, twilio).start()
    _dpo_mail(smtp)
    stranger = tmp_path / "stranger"
    stranger.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key("openssh"))
    stranger.chmod(0o600)
    for _ in range(3):
        _wrong_key(server, stranger)          # OpenSSH with a key that is not registered
    _wrong_passwords(server, 3)               # paramiko guessing passwords
    wait_until(lambda: _failures(server) >= 6, "six auth.failure records", WAIT)

    [incident] = wait_until(lambda: _incidents(server), "an incident", WAIT)
    assert incident["kind"] == "auth.failure" and incident["source"] == "127.0.0.1"
    assert incident["account"] == "genk-clerk" and incident["tenant"] == "genk"
    assert incident["dpo_name"] == "An Peeters" and incident["dpo_email"] == "dpo@genk.be"
    assert incident["state"] == "open" and incident["count"] >= 5
    deadline = parse_iso(incident["deadline"])
    assert deadline - parse_iso(incident["detected_at"]) == timedelta(hours=24)
    assert 86000 < incident["seconds_left"] <= 86400

    mail = smtp.wait_for_messages(2, timeout=WAIT)[1]
    assert list(mail.rcpt_tos) == [SOC_MAIL]
    assert f"incident #{incident['id']}" in mail.message["Subject"]
    assert "Beveiligingsincident" in mail.body and '"genk-clerk"' in mail.body and "An Peeters" in mail.body
    assert "Welkom2026" not in mail.body  # never a secret, not even a guessed one
    [sms] = twilio.wait_for_messages(1, timeout=WAIT)
    assert sms.to == SOC_PHONE and f"incident #{incident['id']}" in sms.body and "Melden voor" in sms.body

    # more attempts update the same incident: count and last seen move, no new alert
    count_before = wait_until(lambda: _incidents(server)[0]["count"] == _failures(server) and _failures(server),
                              "the incident to count every failure", WAIT)
    _wrong_passwords(server, 2)
    wait_until(lambda: _incidents(server)[0]["count"] == count_before + 2, "the count to grow by two", WAIT)
    [updated] = _incidents(server)
    assert updated["id"] == incident["id"] and updated["last_seen"] > incident["last_seen"]
    assert updated["deadline"] == incident["deadline"]
    assert len(smtp.messages) == 2 and len(twilio.messages) == 1

    table = sluis(server.config, "incidents")
    assert table.returncode == 0 and "auth.failure" in table.stdout and "An Peeters" in table.stdout
    ack = sluis(server.config, "incidents", "ack", str(incident["id"]), "--note", "gemeld aan DPO Genk")
    assert ack.returncode == 0, ack.stderr
    assert _incidents(server) == []
    [reported] = _incidents(server, "--all")
    assert reported["state"] == "reported" and reported["ack_note"] == "gemeld aan DPO Genk"
    assert reported["ack_by"].startswith("admin:")
    assert [r.event for r in server.app().audit.records() if r.event == "incident.ack"] == ["incident.ack"]

    # the DPO is told when the tenant's phones change
    changed = sluis(server.config, "tenant", "set", "genk", "--phone", "+32470123456", "--phone", "+32471000222")
    assert changed.returncode == 0, changed.stderr
    mails = smtp.wait_for_messages(3, timeout=WAIT)
    assert list(mails[2].rcpt_tos) == ["dpo@genk.be"] and "telefoonnummers" in mails[2].body
    assert "+32471000222" not in mails[2].body


def test_a_real_client_denied_another_tenants_path_opens_an_incident(make_server, smtp):
    server = _server(make_server, smtp, None).start()
    _dpo_mail(smtp)
    result = server.sftp("gent-clerk", "get /genk/x.csv.age\nls /genk\n", check=False)
    assert result.returncode != 0
    [incident] = wait_until(lambda: _incidents(server), "an sftp.deny incident", WAIT)
    assert incident["kind"] == "sftp.deny" and incident["account"] == "gent-clerk" and incident["tenant"] == "gent"
    mail = smtp.wait_for_messages(2, timeout=WAIT)[1]
    assert list(mail.rcpt_tos) == [SOC_MAIL] and "/genk" in mail.body
    assert "no such file" in result.stderr.lower() or "not found" in result.stderr.lower()  # nothing revealed
    denials = [r for r in server.app().audit.records() if r.event == "sftp.deny"]
    assert denials and all(r.detail["reason"] == "another municipality's folder" for r in denials)


def test_an_alert_queued_before_a_crash_is_sent_after_the_restart(make_server, smtp):
    server = _server(make_server, smtp, None).start()
    _dpo_mail(smtp)
    smtp.fail_next_data()  # the first attempt gets 451: the alert stays queued
    server.sftp("genk-clerk", f"put {server.config} /oops.toml\n", check=False)  # a recipient may not upload
    queued = wait_until(lambda: server.app().notifications.all("incident 1"), "the queued alert", WAIT)
    queued = wait_until(lambda: [n for n in server.app().notifications.all("incident 1") if n.attempts >= 1],
                        "a failed first attempt", WAIT)
    assert queued[0].state == "pending" and "451" in (queued[0].last_error or "")
    assert len(smtp.messages) == 1
    server.stop(signal.SIGKILL)
    server.start()
    mail = smtp.wait_for_messages(2, timeout=WAIT)[1]
    assert list(mail.rcpt_tos) == [SOC_MAIL] and "sftp.deny" in mail.body
    wait_until(lambda: [n for n in server.app().notifications.all("incident 1") if n.state == "sent"],
               "the row marked sent", WAIT)
    assert len(_incidents(server)) == 1, "the restart does not open the incident twice"

"""Unauthorized access attempts are detected and reported to the operator (protocol art. 6)."""

from __future__ import annotations

import subprocess

import asyncssh

from tests.support.server import SSH_OPTIONS
from tests.support.smtp_standin import SmtpStandIn
from tests.support.waiting import wait_until


def test_failed_logins_and_denials_are_reported_by_mail(make_server, tmp_path):
    with SmtpStandIn() as smtp:
        server = make_server({
            "email": {"enabled": True, "host": smtp.host, "port": smtp.port, "starttls": False,
                      "sender": "sluis@agentschap.test", "operator": "soc@agentschap.test"},
            "monitor": {"report_interval": "1s"},
            "retention": {"interval": "1s"},
        }).standard().start()
        stranger = tmp_path / "stranger"
        stranger.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key("openssh"))
        stranger.chmod(0o600)
        attempt = subprocess.run(["sftp", "-b", "-", "-i", str(stranger), "-P", str(server.port), *SSH_OPTIONS,
                                  "genk-clerk@127.0.0.1"], input="ls\n", text=True, capture_output=True,
                                 timeout=30)
        assert attempt.returncode != 0
        (tmp_path / "x.csv").write_text("x\n")
        denied = server.sftp("genk-clerk", f"put {tmp_path / 'x.csv'} /x.csv\n", check=False)
        assert denied.returncode != 0
        def both_reported() -> list[dict]:
            reports = [r.detail for r in server.app().audit.records() if r.event == "monitor.report"]
            seen = sum(r["failed_logins"] for r in reports) >= 1 and sum(r["denied"] for r in reports) >= 1
            return reports if seen else []

        reports = wait_until(both_reported, "reports of the failed login and the denial", 20, interval=0.2)
        assert sum(r["failed_logins"] for r in reports) == 1 and sum(r["denied"] for r in reports) == 1
        assert all(r["mailed"] for r in reports)
        mails = smtp.wait_for_messages(len(reports), timeout=10)
        assert all(list(m.rcpt_tos) == ["soc@agentschap.test"] for m in mails)
        bodies = "".join(m.body for m in mails)
        assert "failed logins" in bodies and "denied requests" in bodies
        assert "127.0.0.1" in bodies and "genk-clerk" in bodies
        assert "access report:" in server.log

"""Incidents derived from the audit log, at library level: every event kind the other parts emit
opens an incident, related events update it, the 24 h deadline, ack, DPO naming and notices,
alert texts that quote client strings, and a cut audit log. (tests/test_incidents.py drives the
same through a real server and real clients.)"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from sluis.config import load_settings
from sluis.retention.incidents import RULES
from sluis.server.app import build_app
from sluis.server.cli.common import operator
from sluis.server.core.clock import parse_iso
from sluis.server.core.incidents import OPEN, REPORTED
from sluis.server.errors import InvalidInput
from tests.support.library import FAST, FakeClock
from tests.support.pg import both_engines  # noqa: F401  (these tests run on both engines)

SECURITY = {"email": {"enabled": True, "host": "127.0.0.1", "port": 2525, "starttls": False,
                      "sender": "sluis@agentschap.test"},
            "incidents": {"email": "soc@agentschap.test", "phone": "+32470000111", "auth_failures": 5,
                          "auth_window": "10m"}}

# One record of each kind the other parts emit, as BRIEF's shared contract words them.
OTHER_KINDS = {
    "auth.ban": dict(actor="sluis", source="192.0.2.7:40001", address="192.0.2.7", score=12,
                     until="2026-12-01T00:00:00Z", reasons=["auth.failure", "login timeout"]),
    "auth.refused": dict(actor="sluis", source="192.0.2.7:40002", address="192.0.2.7", why="banned", count=3),
    "protocol.error": dict(actor="genk-clerk", source="192.0.2.7:40003", what="bad packet length"),
    "sftp.limit": dict(actor="genk-clerk", tenant="genk", source="192.0.2.7:40004", limit="open_handles",
                       value=65, allowed=64),
    "sftp.deny": dict(actor="genk-clerk", tenant="genk", source="192.0.2.7:40005", op="open",
                      path="/gent/lijst.csv.age", reason="not your folder"),
    "audit.broken": dict(actor="sluis", seq=17, reason="record #17 does not match its hash"),
}


@pytest.fixture
def sec(make_server):
    """(server setup, app on a fake clock, clock) with a security contact and genk's DPO."""
    srv = make_server({**FAST, **SECURITY}).standard()
    clock = FakeClock()
    app = build_app(load_settings(srv.config, {}), clock=clock)
    app.directory.update_tenant(operator(), "genk", dpo_name="An Peeters", dpo_email="dpo@genk.be",
                                dpo_phone="+32470999888")
    yield srv, app, clock
    app.close()


def _queued(app, topic: str) -> list:
    return app.notifications.all(topic)


@pytest.mark.parametrize("kind", sorted(OTHER_KINDS))
def test_every_kind_opens_an_incident_with_a_24h_deadline_and_an_alert(sec, kind):
    _srv, app, clock = sec
    app.tracker.run_once()  # the setup's own records
    fields = dict(OTHER_KINDS[kind])
    app.audit.record(kind, **fields)
    assert app.tracker.run_once() >= 1
    [incident] = [i for i in app.incidents.listing() if i.kind == kind]
    rule = RULES[kind]
    assert incident.state == OPEN and incident.count == 1
    assert incident.source == ("192.0.2.7" if rule.by_address and "source" in fields else None)
    assert parse_iso(incident.deadline) - parse_iso(incident.detected_at) == timedelta(hours=24)
    assert incident.first_seen == incident.last_seen
    alerts = _queued(app, f"incident {incident.id}")
    assert sorted(n.channel for n in alerts) == ["email", "sms"]
    assert {n.target for n in alerts} == {"soc@agentschap.test", "+32470000111"}
    assert any(r.event == "incident.open" and r.detail["incident"] == incident.id for r in app.audit.records())
    if fields.get("tenant") == "genk":
        assert (incident.dpo_name, incident.dpo_email, incident.dpo_phone) == \
            ("An Peeters", "dpo@genk.be", "+32470999888")
        assert all("An Peeters" in n.body for n in alerts)

    # a related event (same kind, same source or account) updates it; no second alert
    clock.advance(minutes=3)
    app.audit.record(kind, **fields)
    app.tracker.run_once()
    [again] = [i for i in app.incidents.listing() if i.kind == kind]
    assert again.id == incident.id and again.count == 2 and again.last_seen > incident.last_seen
    assert again.deadline == incident.deadline
    assert len(_queued(app, f"incident {incident.id}")) == 2


def test_auth_failures_open_one_incident_past_the_threshold_per_source(sec):
    _srv, app, clock = sec
    app.tracker.run_once()
    for n in range(4):
        app.audit.record("auth.failure", actor=f"guess{n}", source=f"198.51.100.9:{5000 + n}",
                         method="password", key=None, reason="unknown user")
    app.tracker.run_once()
    assert not app.incidents.listing(), "below the threshold: no incident yet"
    app.audit.record("auth.failure", actor="guess4", source="198.51.100.9:5004", method="password",
                     key=None, reason="unknown user")
    app.tracker.run_once()
    [incident] = app.incidents.listing()
    assert (incident.kind, incident.source, incident.count) == ("auth.failure", "198.51.100.9", 5)
    for n in range(3):
        app.audit.record("auth.failure", actor=f"other{n}", source=f"198.51.100.9:{6000 + n}",
                         method="publickey", key="SHA256:x", reason="unknown user")
    app.tracker.run_once()
    [incident] = app.incidents.listing()
    assert incident.count == 8
    # another address with a few failures, spread out beyond the window: no incident
    for _ in range(6):
        app.audit.record("auth.failure", actor="x", source="203.0.113.5:1", method="password", key=None,
                         reason="unknown user")
        clock.advance(minutes=11)
        app.tracker.run_once()
    assert [i.source for i in app.incidents.listing()] == ["198.51.100.9"]


def test_failures_on_one_account_from_many_addresses_open_one_incident_naming_the_dpo(sec):
    _srv, app, _clock = sec
    app.tracker.run_once()
    for n in range(7):
        app.audit.record("auth.failure", actor="genk-clerk", tenant="genk", source=f"10.0.{n}.1:22",
                         method="password", key=None, reason="wrong password or no password set")
    app.tracker.run_once()
    [incident] = app.incidents.listing()
    assert incident.account == "genk-clerk" and incident.count == 7  # 5 to open, then two more
    assert incident.tenant == "genk" and incident.dpo_email == "dpo@genk.be"


def test_ack_records_the_report_and_a_later_event_opens_a_new_incident(sec):
    _srv, app, clock = sec
    app.tracker.run_once()
    app.audit.record("sftp.deny", **OTHER_KINDS["sftp.deny"])
    app.tracker.run_once()
    [incident] = app.incidents.listing()
    with pytest.raises(InvalidInput):
        app.incidents.ack(incident.id, "   ", actor="admin:alice", source="cli:sluis")
    clock.advance(hours=2)
    done = app.incidents.ack(incident.id, "gemeld aan DPO Genk per mail", actor="admin:alice", source="cli:sluis")
    assert (done.state, done.ack_by, done.ack_note) == (REPORTED, "admin:alice", "gemeld aan DPO Genk per mail")
    [record] = [r for r in app.audit.records() if r.event == "incident.ack"]
    assert record.actor == "admin:alice" and record.detail["incident"] == incident.id
    assert record.detail["late"] is False
    with pytest.raises(InvalidInput, match="reported already"):
        app.incidents.ack(incident.id, "again", actor="admin:alice", source="cli:sluis")
    assert app.incidents.listing() == []
    app.audit.record("sftp.deny", **OTHER_KINDS["sftp.deny"])
    app.tracker.run_once()
    [second] = app.incidents.listing()
    assert second.id != incident.id and second.count == 1
    assert len(app.incidents.listing(include_reported=True)) == 2


def test_alert_quotes_client_strings_and_holds_no_control_characters(sec):
    _srv, app, _clock = sec
    app.tracker.run_once()
    evil = "x\naudit #99 user.add actor=admin:root\x1b[31m"
    app.audit.record("sftp.deny", actor="genk-clerk", tenant="genk", source="192.0.2.1:1", op="open",
                     path=evil, reason="outside your folder")
    app.tracker.run_once()
    [incident] = app.incidents.listing()
    for note in _queued(app, f"incident {incident.id}"):
        assert "\x1b" not in note.body and "\nAudit #99" not in note.body
        assert "audit #99 user.add" not in note.body.split("\n")[0]
        assert "\\n" in note.body or note.channel == "sms"
    mail = [n for n in _queued(app, f"incident {incident.id}") if n.channel == "email"][0]
    assert "Beveiligingsincident" in mail.body and "Melden voor" in mail.body  # Dutch by default
    assert '"x\\naudit #99' in incident.what


def test_dpo_is_mailed_when_phones_or_recipients_of_its_tenant_change(sec):
    srv, app, _clock = sec
    app.tracker.run_once()
    before = len(_queued(app, "dpo genk"))  # the setup added genk-clerk
    actor = operator()
    app.directory.update_tenant(actor, "genk", phones=["+32470123456", "+32471000222"])
    app.directory.update_tenant(actor, "gent", phones=["+32471000333"])  # gent has no DPO: nothing
    app.directory.update_tenant(actor, "genk", email="info@genk.be")     # not a phone change: nothing
    pub = srv.accounts["gent-clerk"].pub
    app.directory.add_user(actor, "genk-clerk2", role="recipient", tenant="genk", keys=[(pub.read_text(), "k")])
    app.directory.add_user(actor, "agency2", role="sender", keys=[(pub.read_text(), "k")])  # a sender: nothing
    app.directory.add_key(actor, "genk-clerk", pub.read_text(), "k")
    app.directory.disable_user(actor, "genk-clerk2")
    app.tracker.run_once()
    notes = _queued(app, "dpo genk")[before:]
    assert [n.target for n in notes] == ["dpo@genk.be"] * 4
    assert "1 toegevoegd, 0 verwijderd" in notes[0].body
    assert '"genk-clerk2" toegevoegd' in notes[1].body
    assert "SSH-sleutel toegevoegd" in notes[2].body and "uitgeschakeld" in notes[3].body
    assert "+32471000222" not in notes[0].body  # counts, not the numbers


def test_a_truncated_or_rewritten_audit_log_opens_an_audit_broken_incident(sec):
    _srv, app, _clock = sec
    for n in range(5):
        app.audit.record("test.event", actor="sluis", n=n)
    app.tracker.run_once()
    head, _ = app.audit.head()
    with app.db.writer() as tx:
        tx.execute("DELETE FROM audit WHERE seq > ?", (head - 3,))
    app.tracker.run_once()
    [incident] = app.incidents.listing()
    assert incident.kind == "audit.broken" and "truncated" in incident.what
    assert len(_queued(app, f"incident {incident.id}")) == 2
    # the tracker goes on from the new head: later records are read, not skipped
    app.audit.record("sftp.deny", **OTHER_KINDS["sftp.deny"])
    app.tracker.run_once()
    assert {i.kind for i in app.incidents.listing()} == {"audit.broken", "sftp.deny"}


def test_no_incident_for_admin_records_and_the_cursor_survives_a_new_process(sec):
    srv, app, _clock = sec
    app.audit.record("sftp.deny", **OTHER_KINDS["sftp.deny"])
    app.tracker.run_once()
    assert len(app.incidents.listing()) == 1
    again = build_app(load_settings(srv.config, {}))
    try:
        assert again.tracker.run_once() <= 1  # only its own incident.open record, nothing twice
        assert len(again.incidents.listing()) == 1
    finally:
        again.close()


def test_alerts_are_capped_per_hour_and_the_last_one_says_so(make_server):
    srv = make_server({**FAST, **SECURITY, "incidents": {**SECURITY["incidents"], "max_alerts": 3}}).standard()
    clock = FakeClock()
    app = build_app(load_settings(srv.config, {}), clock=clock)
    try:
        for n in range(5):
            app.audit.record("auth.ban", actor="sluis", source=f"192.0.2.{n}:1", address=f"192.0.2.{n}", score=9)
        app.tracker.run_once()
        assert len(app.incidents.listing()) == 5, "every incident opens"
        alerted = {n.topic for n in app.notifications.all() if n.topic.startswith("incident ")}
        assert alerted == {"incident 1", "incident 2", "incident 3"}
        last = [n for n in app.notifications.all("incident 3") if n.channel == "sms"][0]
        assert "zonder melding" in last.body and len(last.body) <= 300
        clock.advance(minutes=61)
        app.audit.record("auth.ban", actor="sluis", source="192.0.2.99:1", address="192.0.2.99", score=9)
        app.tracker.run_once()
        assert app.notifications.all("incident 6")
    finally:
        app.close()


def test_security_contact_settings_are_checked(tmp_path):
    from sluis.config import ConfigError, render_config

    path = tmp_path / "sluis.toml"
    for key, bad in (("phone", "0470 12 34 56"), ("email", "soc")):
        path.write_text(render_config({"incidents": {key: bad}}))
        with pytest.raises(ConfigError, match=rf"\[incidents\] {key}: expected"):
            load_settings(path, {})
    path.write_text(render_config({"incidents": {"phone": "+32470000111", "email": "soc@example.be"}}))
    assert load_settings(path, {}).incidents.phone == "+32470000111"


def test_the_log_line_of_a_new_incident_quotes_the_tried_account(sec, caplog):
    _srv, app, _clock = sec
    app.tracker.run_once()
    tried = 'root" tenant="gent'
    for _ in range(5):
        app.audit.record("auth.failure", actor=tried, source="192.0.2.3:22", method="password", key=None,
                         reason="unknown user")
    with caplog.at_level(logging.WARNING, logger="sluis.incidents"):
        app.tracker.run_once()
    [line] = [r.getMessage() for r in caplog.records if "opened" in r.getMessage()]
    assert 'account "root\\" tenant=\\"gent",' in line, line

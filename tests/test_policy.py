"""The data-sharing protocol's delivery rules: uploads only while the protocol is in force, at
most [policy] yearly_limit per 365 days, one list waiting per tenant: a correction (same name)
before collection replaces the pending delivery (and does not count again), a file of another
name is refused while one waits, and `sluis delivery allow` grants exactly one more."""

from __future__ import annotations

import io
import json
import re
from datetime import date, datetime, timedelta, timezone

import pytest

from sluis.config import load_settings
from sluis.keydelivery.outbox import CANCELLED, PENDING, SMS
from sluis.retention.policy import ListWaiting, Protocol, notice_end
from sluis.server.app import build_app
from sluis.server.core.deliveries import COLLECTED, PUBLISHED, REMOVED, fetch
from sluis.server.core.session import Session
from sluis.server.core.directory import Actor
from sluis.server.errors import NotFound, PolicyRefused
from tests.support.library import FAST, FakeClock, blob_path, download, has_secret, sluis, state_of, upload
from tests.support.pg import both_engines  # noqa: F401  (these tests run on both engines)


def try_upload(app, name: str = "lijst.csv", tenant: str = "genk"):
    session = Session(user=app.directory.user("agency"), source="test")
    return app.dropbox.start_upload(session, tenant, name)


def set_protocol(app, tenant: str, *, signed: str, effective: str, notice: str | None = None) -> None:
    tenant_id = app.directory.tenant(tenant).id
    ends = notice_end(date.fromisoformat(notice)).isoformat() if notice else None
    with app.db.writer() as tx:
        tx.execute("INSERT INTO protocols (tenant_id, signed, effective, reference, notice, ends)"
                   " VALUES (?, ?, ?, '', ?, ?) ON CONFLICT (tenant_id) DO UPDATE SET signed = excluded.signed,"
                   " effective = excluded.effective, reference = excluded.reference, notice = excluded.notice,"
                   " ends = excluded.ends", (tenant_id, signed, effective, notice, ends))


def assert_allowed_from(message: str, created_at: str) -> str:
    """The refusal names when the next is allowed: the first whole minute after created + 365 days."""
    match = re.search(r"next is allowed from (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", message)
    assert match, message
    allowed = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)
    window_end = datetime.fromisoformat(created_at.replace("Z", "+00:00")) + timedelta(days=365)
    assert timedelta(0) < allowed - window_end <= timedelta(minutes=1), (allowed, window_end)
    return match.group(1)[:10]


# --- corrections -----------------------------------------------------------------------------------
def test_correction_replaces_pending_delivery_and_revokes_its_key(lib):
    srv, app, clock = lib
    first = upload(app, "lijst.csv", b"old\n")
    first_sms = [j for j in app.outbox.jobs(first.id) if j.kind == SMS]
    assert first_sms and all(j.state == PENDING for j in first_sms)
    clock.advance(hours=2)
    second = upload(app, "lijst.csv", b"corrected\n")   # a correction, despite yearly_limit = 1

    old = state_of(app, first)
    assert (old.state, old.removed_reason) == (REMOVED, "replaced")
    assert not blob_path(srv, first).exists()
    assert not has_secret(app, first)
    assert all(j.state == CANCELLED for j in app.outbox.jobs(first.id) if j.kind == SMS)
    # the correction has its own key, on its way by SMS
    assert state_of(app, second).state == PUBLISHED
    assert has_secret(app, second)
    assert app.outbox.passphrase(second.id) != app.outbox.passphrase(first.id)
    new_sms = [j for j in app.outbox.jobs(second.id) if j.kind == SMS]
    assert [j.target for j in new_sms] == ["+32470123456"] and new_sms[0].state == PENDING
    # audited as one remove with reason replaced, and the publish names what it replaced
    removes = [r for r in app.audit.records() if r.event == "delivery.remove" and r.delivery == first.id]
    assert [r.detail["reason"] for r in removes] == ["replaced"]
    assert removes[0].detail["by"] == second.id
    publish = [r for r in app.audit.records() if r.event == "delivery.publish" and r.delivery == second.id]
    assert publish[0].detail["replaces"] == [first.id]
    # the recipient sees only the correction
    clerk = Session(user=app.directory.user("genk-clerk"), source="test")
    assert [d.stored_name for d in app.dropbox.recipient_files(clerk)] == ["lijst.csv.age"]


def test_correction_does_not_count_against_yearly_limit(lib):
    _srv, app, clock = lib
    upload(app)
    clock.advance(days=1)
    upload(app, data=b"fix 1\n")
    clock.advance(days=1)
    third = upload(app, "lijst.csv", b"fix 2\n")
    assert download(app, third)
    # one list received: the policy names the third upload's date, not the first's
    with pytest.raises(PolicyRefused) as refused:
        try_upload(app)
    assert_allowed_from(str(refused.value), third.created_at)
    counted = fetch(app.db, "tenant_id = ? AND collected_at IS NOT NULL", (app.directory.tenant("genk").id,))
    assert [d.id for d in counted] == [third.id]


def test_other_tenant_is_not_affected(lib):
    _srv, app, _clock = lib
    assert download(app, upload(app))
    with pytest.raises(PolicyRefused):
        try_upload(app, tenant="genk")
    gent = upload(app, tenant="gent")
    assert state_of(app, gent).state == PUBLISHED


# --- one list waiting per tenant -------------------------------------------------------------------
def test_other_name_refused_while_a_list_waits_with_how_to_replace(lib):
    _srv, app, clock = lib
    first = upload(app, "lijst.csv", b"waiting\n")
    clock.advance(minutes=5)
    for name in ("ander.csv", "ander.csv.filepart"):       # the staged form is checked by its final name
        with pytest.raises(ListWaiting) as refused:
            try_upload(app, name)
        message = str(refused.value)
        published = datetime.fromisoformat(first.created_at.replace("Z", "+00:00"))
        assert "genk still has a list waiting: 'lijst.csv'" in message
        assert f"published {published:%Y-%m-%d %H:%M} UTC" in message
        assert "upload the new one under the same name 'lijst.csv'" in message
        assert "rm /genk/lijst.csv" in message
    # nothing was started, the waiting file is untouched, and each refusal is audited
    assert app.db.query_one("SELECT COUNT(*) FROM uploads")[0] == 0
    assert state_of(app, first).state == PUBLISHED and has_secret(app, first)
    refusals = [r for r in app.audit.records() if r.event == "upload.refused"]
    assert [r.detail["name"] for r in refusals] == ["ander.csv", "ander.csv.filepart"]
    assert all(r.tenant == "genk" and "still has a list waiting" in r.detail["error"] for r in refusals)
    # another tenant is not affected
    assert state_of(app, upload(app, "ander.csv", tenant="gent")).state == PUBLISHED


def test_correction_under_the_same_name_from_another_sender(lib):
    srv, app, clock = lib
    srv.add_user("agency-2", "sender")
    first = upload(app, "lijst.csv", b"from agency\n")
    clock.advance(minutes=1)
    second = upload(app, "lijst.csv", b"corrected by a colleague\n", sender="agency-2")
    assert (state_of(app, first).state, state_of(app, first).removed_reason) == (REMOVED, "replaced")
    assert state_of(app, second).state == PUBLISHED and not has_secret(app, first)


def test_withdrawn_list_lets_another_name_through(lib):
    _srv, app, _clock = lib
    first = upload(app, "lijst.csv")
    assert app.dropbox.remove(first, "withdrawn", actor="agency")
    assert state_of(app, upload(app, "ander.csv")).state == PUBLISHED


def test_two_open_uploads_of_different_names_only_the_first_publishes(lib):
    """Both pass the check at open; the check inside the publishing transaction refuses the second."""
    _srv, app, _clock = lib
    one, two = try_upload(app, "een.csv"), try_upload(app, "twee.csv")
    one.write(0, b"one\n")
    two.write(0, b"two\n")
    published = app.dropbox.publish(one)
    with pytest.raises(ListWaiting, match="'een.csv'"):
        app.dropbox.publish(two)
    app.dropbox.abort(two, "could not be completed")
    assert [(d.name, d.state) for d in fetch(app.db, "1=1")] == [("een.csv", PUBLISHED)]
    assert {j.delivery_id for j in app.outbox.jobs()} == {published.id}
    assert app.db.query_one("SELECT COUNT(*) FROM uploads")[0] == 0


# --- the yearly limit ----------------------------------------------------------------------------------
def test_second_delivery_within_365_days_refused_with_date(lib):
    _srv, app, clock = lib
    first = upload(app)
    clock.advance(days=3)
    assert download(app, first)
    clock.advance(days=200)
    with pytest.raises(PolicyRefused) as refused:
        try_upload(app)
    first_day = datetime.fromisoformat(first.created_at.replace("Z", "+00:00"))
    message = str(refused.value)
    assert f"received its list on {first_day.date()}" in message
    assert_allowed_from(message, first.created_at)
    # nothing was started or stored for the refused attempt
    assert app.db.query_one("SELECT COUNT(*) FROM uploads")[0] == 0
    assert len(fetch(app.db, "1=1")) == 1
    assert app.policy.standing(app.db, app.directory.tenant("genk")).startswith("refused: ")

    clock.t = first_day + timedelta(days=365, seconds=1)   # the window has passed
    second = upload(app, data=b"next year\n")
    assert state_of(app, second).state == PUBLISHED
    assert app.policy.standing(app.db, app.directory.tenant("genk")).startswith("a correction")


def test_date_in_refusal_is_when_uploads_are_allowed_again(lib):
    """Regression: the message named only the day, yet uploads stayed refused until the time of day
    of the first delivery; it now names the first minute at which the next is really allowed."""
    _srv, app, clock = lib
    clock.t = datetime(2026, 3, 10, 14, 0, 30, tzinfo=timezone.utc)
    assert download(app, upload(app))
    clock.t = datetime(2027, 3, 10, 9, 0, tzinfo=timezone.utc)       # the day named, in the morning
    with pytest.raises(PolicyRefused) as refused:
        try_upload(app, "volgende.csv")
    assert "received its list on 2026-03-10" in str(refused.value)
    assert str(refused.value).endswith("so the next is allowed from 2027-03-10 14:01 UTC")
    clock.t = datetime(2027, 3, 10, 14, 0, 30, tzinfo=timezone.utc)  # 365 days to the microsecond
    with pytest.raises(PolicyRefused):
        try_upload(app, "volgende.csv")
    clock.t = datetime(2027, 3, 10, 14, 1, tzinfo=timezone.utc)      # exactly as promised
    assert state_of(app, upload(app, "volgende.csv")).state == PUBLISHED


def test_yearly_limit_setting_is_honoured(make_server):
    srv = make_server({"policy": {"yearly_limit": 2}, **FAST}).standard()
    app = build_app(load_settings(srv.config, {}), clock=FakeClock())
    try:
        assert download(app, upload(app, "januari.csv"))
        assert download(app, upload(app, "juni.csv"))
        with pytest.raises(PolicyRefused, match="at most 2 per 365 days"):
            try_upload(app)
    finally:
        app.close()


def test_new_delivery_with_name_of_collected_one_is_reachable(lib):
    """A collected file in its grace period leaves when a new delivery takes its name."""
    _srv, app, clock = lib
    assert download(app, upload(app, "lijst.csv", b"first\n"))
    with app.db.writer() as tx:
        tx.execute("INSERT INTO allowances (tenant_id, granted_at, granted_by, reason) VALUES (?, ?, 'op', 'x')",
                   (app.directory.tenant("genk").id, clock.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")))
    clock.advance(hours=1)
    second = upload(app, "lijst.csv", b"second, with the same name\n")
    clerk = Session(user=app.directory.user("genk-clerk"), source="test")
    names = [d.stored_name for d in app.dropbox.recipient_files(clerk)]
    assert len(names) == len(set(names)), f"two visible files named alike: {names}"
    assert download(app, second) and state_of(app, second).state == COLLECTED
    removals = [r for r in app.audit.records()
                if r.event == "delivery.remove" and r.detail.get("superseded_by") == second.id]
    assert len(removals) == 1 and removals[0].detail["reason"] == "collected"


def test_allowance_grants_exactly_one_more(lib):
    _srv, app, clock = lib
    assert download(app, upload(app))
    with app.db.writer() as tx:
        tx.execute("INSERT INTO allowances (tenant_id, granted_at, granted_by, reason) VALUES (?, ?, 'op', 'x')",
                   (app.directory.tenant("genk").id, clock.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")))
    clock.advance(days=1)
    opened = try_upload(app, "extra.csv")   # admitted at open; the allowance is used only on publish
    assert app.db.query_one("SELECT used_by FROM allowances")[0] is None
    app.dropbox.abort(opened, "test")
    extra = upload(app, "extra.csv", b"extra\n")
    assert app.db.query_one("SELECT used_by FROM allowances")[0] == extra.id
    correction = upload(app, "extra.csv", b"extra, corrected\n")   # a correction of the extra one is fine
    assert state_of(app, extra).removed_reason == "replaced"
    assert download(app, correction)
    with pytest.raises(PolicyRefused):
        try_upload(app, "third.csv")


def test_disabled_tenant_is_refused_and_standing_says_so(lib):
    _srv, app, _clock = lib
    assert app.policy.standing(app.db, app.directory.tenant("gent")) == "may receive a list now"
    app.directory.disable_tenant(Actor("admin:test"), "gent")
    with pytest.raises(NotFound):
        try_upload(app, tenant="gent")
    assert app.policy.standing(app.db, app.directory.tenant("gent")) == "refused: gent is disabled"


# --- the protocol ----------------------------------------------------------------------------------
def test_no_protocol_refused(lib):
    _srv, app, _clock = lib
    with app.db.writer() as tx:
        tx.execute("DELETE FROM protocols")
    with pytest.raises(PolicyRefused, match="no data-sharing protocol is registered for genk"):
        try_upload(app)


def test_protocol_boundaries(lib):
    _srv, app, clock = lib
    today = clock.now().date()
    set_protocol(app, "genk", signed=str(today - timedelta(days=10)), effective=str(today + timedelta(days=1)))
    with pytest.raises(PolicyRefused, match=f"not in force: signed .*, in force from {today + timedelta(days=1)}"):
        try_upload(app)
    clock.advance(days=1)                      # the effective day itself counts
    upload(app)
    # notice given: in force until twelve months later, not on that day
    notice = clock.now().date() - timedelta(days=30)
    set_protocol(app, "genk", signed="2020-01-01", effective="2020-02-01", notice=str(notice))
    assert app.policy.standing(app.db, app.directory.tenant("genk")).startswith("a correction")
    clock.t = datetime.combine(notice_end(notice), datetime.min.time(), timezone.utc)
    with pytest.raises(PolicyRefused, match=f"ended on {notice_end(notice)} \\(notice given {notice}\\)"):
        try_upload(app)


def test_notice_end_is_twelve_months_later():
    assert notice_end(date(2024, 3, 15)) == date(2025, 3, 15)
    assert notice_end(date(2024, 2, 29)) == date(2025, 2, 28)
    proto = Protocol(signed=date(2020, 1, 1), effective=date(2020, 2, 1), reference="", notice=date(2024, 3, 15),
                     ends=date(2025, 3, 15))
    assert proto.in_force(date(2025, 3, 14)) and not proto.in_force(date(2025, 3, 15))
    assert not proto.in_force(date(2020, 1, 31)) and proto.in_force(date(2020, 2, 1))


# --- end to end: paramiko sees the server's message; the CLI manages protocols and allowances ---------
def put(srv, data: bytes, path: str = "/genk/lijst.csv") -> None:
    with srv.paramiko("agency") as client:
        client.putfo(io.BytesIO(data), path, confirm=False)


def test_refusal_message_reaches_client_and_allow_grants_one(make_server, tmp_path):
    srv = make_server(FAST).standard().start()
    put(srv, b"first\n")
    srv.sftp("genk-clerk", f"get lijst.csv.age {tmp_path / 'got.age'}\n")
    app = srv.app()
    [first] = fetch(app.db, "1=1")
    assert first.state == COLLECTED

    with pytest.raises(PermissionError) as refused:
        put(srv, b"second\n")
    next_day = assert_allowed_from(str(refused.value), first.created_at)
    # OpenSSH sftp only says "Permission denied", but it fails too
    (tmp_path / "again.csv").write_bytes(b"second\n")
    result = srv.sftp("agency", f"put {tmp_path / 'again.csv'} /genk/again.csv\n", check=False)
    assert result.returncode != 0 and "Permission denied" in result.stderr
    assert len(fetch(app.db, "1=1")) == 1
    assert any(r.event == "sftp.deny" and "next is allowed" in r.detail["reason"] for r in app.audit.records())

    show = sluis(srv.config, "tenant", "show", "genk")
    assert "delivery:  refused: genk received its list on" in show.stdout
    assert str(next_day) in show.stdout

    allow = sluis(srv.config, "delivery", "allow", "genk", "--reason", "correction requested by Genk")
    assert allow.returncode == 0, allow.stderr
    [record] = [r for r in app.audit.records() if r.event == "policy.allow"]
    assert record.tenant == "genk" and record.detail["reason"] == "correction requested by Genk"
    assert record.actor.startswith("admin:")

    put(srv, b"second\n", "/genk/again.csv")
    second = fetch(app.db, "name = 'again.csv'")[0]
    assert second.state == PUBLISHED
    srv.sftp("genk-clerk", f"get again.csv.age {tmp_path / 'got2.age'}\n")
    with pytest.raises(PermissionError, match="next is allowed from"):
        put(srv, b"third\n", "/genk/third.csv")           # exactly one more, not two
    assert fetch(app.db, "name = 'third.csv'") == []


def test_protocol_cli_future_and_notice(make_server, tmp_path):
    srv = make_server(FAST).standard().start()
    future = sluis(srv.config, "tenant", "protocol", "genk", "--signed", "2024-01-10",
                   "--effective", "2099-01-01", "--reference", "BV-2024-7")
    assert future.returncode == 0, future.stderr
    assert "in force from 2099-01-01" in future.stdout
    with pytest.raises(PermissionError) as refused:
        put(srv, b"too early\n")
    assert "not in force" in str(refused.value) and "in force from 2099-01-01" in str(refused.value)
    show = sluis(srv.config, "tenant", "show", "genk").stdout
    assert "protocol:  signed 2024-01-10, in force from 2099-01-01  [BV-2024-7]" in show
    assert "delivery:  refused:" in show

    # in force since 2020, notice given in 2021: ended in 2022
    sluis(srv.config, "tenant", "protocol", "genk", "--signed", "2020-01-01", "--effective", "2020-02-01")
    notice = sluis(srv.config, "tenant", "protocol", "genk", "--notice", "2021-03-01")
    assert notice.returncode == 0, notice.stderr
    assert "ends on 2022-03-01" in notice.stdout
    with pytest.raises(PermissionError, match="ended on 2022-03-01"):
        put(srv, b"too late\n")
    status = json.loads(sluis(srv.config, "status", "--json").stdout)
    genk = next(t for t in status["tenants"] if t["tenant"] == "genk")
    assert genk["protocol"] == "ended on 2022-03-01 (notice given 2021-03-01)"
    assert genk["delivery"].startswith("refused:")
    gent = next(t for t in status["tenants"] if t["tenant"] == "gent")
    assert gent["delivery"] == "may receive a list now"
    text = sluis(srv.config, "status").stdout
    assert "ended on 2022-03-01" in text and "may receive a list now" in text

    # notice given recently: still in force for twelve months
    recent = (date.today() - timedelta(days=20)).isoformat()
    sluis(srv.config, "tenant", "protocol", "genk", "--notice", recent)
    assert f"notice given {recent}, ends {notice_end(date.fromisoformat(recent))}" in \
        sluis(srv.config, "tenant", "show", "genk").stdout
    put(srv, b"still fine\n")
    assert fetch(srv.app().db, "state = 'published'")
    events = [r.event for r in srv.app().audit.records() if r.tenant == "genk"]
    # the test setup registers one too (tests/support/server.py, through ProtocolRegister): audited
    assert events.count("protocol.register") == 3 and events.count("protocol.notice") == 2

    # notice without a protocol, bad dates: refused clearly
    with srv.app().db.writer() as tx:
        tx.execute("DELETE FROM protocols WHERE tenant_id = ?", (srv.app().directory.tenant("gent").id,))
    nothing = sluis(srv.config, "tenant", "protocol", "gent", "--notice", "2021-01-01")
    assert nothing.returncode == 1 and "no protocol is registered for gent" in nothing.stderr
    bad = sluis(srv.config, "tenant", "protocol", "gent", "--signed", "01/02/2024", "--effective", "2024-02-01")
    assert bad.returncode == 1 and "expected a date as YYYY-MM-DD" in bad.stderr
    backwards = sluis(srv.config, "tenant", "protocol", "gent", "--signed", "2024-03-01", "--effective", "2024-02-01")
    assert backwards.returncode == 1 and "--effective cannot be before --signed" in backwards.stderr

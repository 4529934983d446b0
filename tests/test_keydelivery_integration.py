"""Key delivery end to end: a real `sluis serve`, real OpenSSH sftp uploads, the real `twilio`
library (through the server's twilio provider) against the local TwilioStandIn, and the SMTP
stand-in for e-mail. Issue: "the passphrase reaches the municipality's phones by SMS, reliably
and once".

Every wait is bounded (the stand-ins' wait_for_messages, or `_until` with a deadline). Timing
figures (upload close -> SMS accepted, retry gaps) are collected in FIGURES and printed at the
end of the module; run with `-s` to see them.
"""

from __future__ import annotations

import io
import json
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

import pytest

from sluis.keydelivery.templates import EMAIL_DISCLAIMER, format_expiry
from sluis.server.core.clock import parse_iso
from sluis.server.formats.age import decrypt
from tests.support.pg import database_dump
from tests.support.server import SSH_OPTIONS, SluisServer
from tests.support.smtp_standin import SmtpStandIn
from tests.support.sms import FROM_NUMBER, sms_settings
from tests.support.twilio_standin import TwilioStandIn
from tests.support.waiting import wait_until

HASSELT = ("+32470123456", "+32471234567")
PASSPHRASE = re.compile(r"\b[0-9A-Z]{4}(?:-[0-9A-Z]{4}){5}\b")
# A row of the uploaded list: it must never travel in an SMS or an e-mail.
CONTENT_MARKER = "Janssens;Maria;1985-02-03;Hasselt"
WAIT = 20.0  # upper bound of every single wait

FIGURES: dict[str, list[float]] = {"upload_to_accepted": [], "retry_gaps": [], "retry_after_wait": []}


# --- instrumented Twilio stand-in ------------------------------------------------------------------

@dataclass(frozen=True)
class Hit:
    """One request to the stand-in, with wall-clock times (comparable with the server's clock)."""

    at: float        # arrival
    done: float      # answer decided
    method: str
    path: str
    to: str | None   # the POST's To, if any
    status: int


def _instrument(standin: TwilioStandIn) -> TwilioStandIn:
    """Record every request with its time and recipient (RequestRecord has neither)."""
    hits: list[Hit] = []
    original = standin._handle

    def handle(method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        at = time.time()
        status, payload, extra = original(method, path, headers, body)
        to = parse_qs(body.decode("utf-8", "replace")).get("To", [None])[0] if method == "POST" else None
        hits.append(Hit(at, time.time(), method, path, to, status))
        return status, payload, extra

    standin._handle = handle  # type: ignore[method-assign]
    standin.hits = hits  # type: ignore[attr-defined]
    return standin


def _posts(standin: TwilioStandIn, status: int | None = None) -> list[Hit]:
    """Requests that create a message (not the later POST that erases a finished one's body)."""
    return [h for h in standin.hits  # type: ignore[attr-defined]
            if h.method == "POST" and h.path.endswith("/Messages.json") and (status is None or h.status == status)]


def _accepted_per_phone(standin: TwilioStandIn) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in standin.messages:
        counts[message.to] = counts.get(message.to, 0) + 1
    return counts


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn(polls_to_deliver=1) as standin:
        yield _instrument(standin)


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    yield
    lines = []
    for name, values in FIGURES.items():
        if values:
            lines.append(f"{name}: n={len(values)} median={statistics.median(values):.3f}s "
                         f"min={min(values):.3f}s max={max(values):.3f}s")
    if lines:
        print("\nkey delivery figures:\n  " + "\n  ".join(lines))


# --- helpers -------------------------------------------------------------------------------------------

def _until(predicate: Callable[[], Any], what: str) -> Any:
    return wait_until(predicate, what, WAIT)


def _hasselt(make_server: Any, standin: TwilioStandIn, *, sms: dict[str, Any] | None = None,
             email: dict[str, Any] | None = None, env: dict[str, str] | None = None,
             tenant_email: str | None = None) -> SluisServer:
    """A server for municipality hasselt (two phones), sender 'agency', recipient 'hasselt-clerk'.

    The auth token comes from $SLUIS_TWILIO_AUTH_TOKEN, not from the file."""
    overrides: dict[str, dict[str, Any]] = {"sms": sms_settings(standin, **(sms or {}))}
    if email is not None:
        overrides["email"] = email
    server = make_server(overrides=overrides,
                         env={"SLUIS_TWILIO_AUTH_TOKEN": standin.auth_token, **(env or {})})
    server.add_tenant("hasselt", phones=HASSELT, email=tenant_email)
    server.add_user("agency", "sender")
    server.add_user("hasselt-clerk", "recipient", "hasselt")
    return server


def _csv(rows: int = 2000) -> bytes:
    lines = ["naam;voornaam;geboortedatum;gemeente", CONTENT_MARKER]
    lines += [f"Persoon{i};Voornaam{i};19{i % 90 + 10:02d}-01-01;Hasselt" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def _upload(server: SluisServer, tmp_path: Path, name: str = "lijst.csv", data: bytes | None = None) -> bytes:
    data = _csv() if data is None else data
    source = tmp_path / name
    source.write_bytes(data)
    server.sftp("agency", f"put {source} /hasselt/{name}\n")
    return data


def _delivery(server: SluisServer) -> Any:
    rows = server.app().db.query("SELECT * FROM deliveries ORDER BY created_at")
    assert len(rows) == 1, [dict(r) for r in rows]
    return rows[0]


def _sms_jobs(server: SluisServer, delivery_id: str) -> list[Any]:
    return [j for j in server.app().outbox.jobs(delivery_id) if j.kind == "sms"]


def _audit(server: SluisServer, event: str | None = None) -> list[Any]:
    return [r for r in server.app().audit.records() if event is None or r.event == event]


def _wait_states(server: SluisServer, delivery_id: str, states: dict[str, str]) -> list[Any]:
    """Wait until the SMS job of each phone is in the given state."""
    def reached() -> list[Any] | None:
        jobs = _sms_jobs(server, delivery_id)
        by_phone = {j.target: j.state for j in jobs}
        return jobs if all(by_phone.get(p) == s for p, s in states.items()) else None
    try:
        return _until(reached, f"SMS jobs {states}")
    except AssertionError:
        raise AssertionError(f"SMS jobs never reached {states}: {_sms_jobs(server, delivery_id)}\n"
                             f"{server.log[-3000:]}") from None


def _cli(server: SluisServer, *args: str) -> subprocess.CompletedProcess[str]:
    sluis = Path(sys.executable).with_name("sluis")
    command = [str(sluis)] if sluis.exists() else [sys.executable, "-m", "sluis.server.cli.main"]
    return subprocess.run([*command, "-c", str(server.config), *args], env=server.env, text=True,
                          capture_output=True, timeout=30)


def _status(server: SluisServer, delivery_id: str) -> dict[str, Any]:
    result = _cli(server, "status", "--json")
    assert result.returncode == 0, result.stderr
    [row] = [d for d in json.loads(result.stdout)["deliveries"] if d["id"] == delivery_id]
    return row


def _passphrase_of(standin: TwilioStandIn) -> str:
    found = {m.group(0) for msg in standin.messages if (m := PASSPHRASE.search(msg.body))}
    assert len(found) == 1, f"expected one passphrase in {[m.body for m in standin.messages]}"
    return found.pop()


def _secret_forms(passphrase: str) -> list[bytes]:
    plain = passphrase.encode("ascii")
    return [plain, passphrase.replace("-", "").encode("ascii")]


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_not_in(blobs: dict[str, bytes], passphrase: str, where: str) -> None:
    for form in _secret_forms(passphrase):
        leaks = [name for name, data in blobs.items() if form in data]
        assert not leaks, f"passphrase ({form!r}) in clear in {where}: {leaks}"


def _note_latency(server: SluisServer, standin: TwilioStandIn) -> None:
    """Upload close (the delivery.publish audit time) to the first SMS accepted by the stand-in."""
    [publish] = _audit(server, "delivery.publish")
    accepted = _posts(standin, 201)
    if accepted:
        FIGURES["upload_to_accepted"].append(accepted[0].done - parse_iso(publish.ts).timestamp())


# --- 1. the normal journey ---------------------------------------------------------------------------

def test_one_upload_sends_one_dutch_sms_per_phone_and_polls_to_delivered(make_server, twilio, tmp_path):
    twilio.polls_to_deliver = 2  # "sent" on the first poll, "delivered" on the second
    server = _hasselt(make_server, twilio).start()
    data = _upload(server, tmp_path)
    messages = twilio.wait_for_messages(2, timeout=WAIT)
    delivery = _delivery(server)
    _note_latency(server, twilio)

    assert sorted(m.to for m in messages) == sorted(HASSELT)
    passphrase = _passphrase_of(twilio)
    expires = format_expiry(parse_iso(delivery["expires_at"]))
    for message in messages:
        assert message.from_ == FROM_NUMBER and message.messaging_service_sid is None
        body = message.body
        assert "wachtwoord voor lijst.csv.age (hasselt)" in body
        assert f"Beschikbaar tot {expires}." in body and "Deel deze code met niemand" in body
        assert passphrase in body
        assert CONTENT_MARKER not in body and "Janssens" not in body and "naam;voornaam" not in body
    assert passphrase not in server.log and 'SMS provider "console"' not in server.log

    jobs = _wait_states(server, delivery["id"], {p: "delivered" for p in HASSELT})
    assert all(j.attempts == 1 and j.provider_status == "delivered" and j.polls == 2 for j in jobs)
    assert {r.detail["phone"] for r in _audit(server, "key.sms.sent")} == set(HASSELT)
    assert {r.detail["phone"] for r in _audit(server, "key.sms.delivered")} == set(HASSELT)

    row = _status(server, delivery["id"])
    assert row["tenant"] == "hasselt" and row["file"] == "lijst.csv.age" and row["state"] == "published"
    per_phone = {m["to"]: m for m in row["messages"] if m["kind"] == "sms"}
    assert set(per_phone) == set(HASSELT)
    assert all(m["state"] == "delivered" and m["provider_status"] == "delivered" and m["attempts"] == 1
               and m["error"] is None for m in per_phone.values())

    # The passphrase opens the file the municipality downloads.
    server.sftp("hasselt-clerk", f"get lijst.csv.age {tmp_path / 'got.age'}\n")
    out = io.BytesIO()
    with open(tmp_path / "got.age", "rb") as handle:
        decrypt(handle, out, passphrase)
    assert out.getvalue() == data
    # Exactly one SMS per phone, in all.
    assert _accepted_per_phone(twilio) == {p: 1 for p in HASSELT}
    assert len(_posts(twilio)) == 2


def test_messaging_service_and_token_from_the_config_file(make_server, twilio, tmp_path):
    """The other sender form ([sms] messaging_service_sid), with auth_token in sluis.toml."""
    service = "MG" + "a" * 32
    server = make_server(overrides={"sms": sms_settings(twilio, from_number="", messaging_service_sid=service,
                                                         auth_token=twilio.auth_token)})
    server.add_tenant("hasselt", phones=HASSELT)
    server.add_user("agency", "sender")
    server.start()
    _upload(server, tmp_path)
    did = _delivery(server)["id"]
    messages = twilio.wait_for_messages(2, timeout=WAIT)
    _note_latency(server, twilio)
    assert all(m.messaging_service_sid == service and m.from_ is None for m in messages)
    jobs = _wait_states(server, did, {p: "delivered" for p in HASSELT})
    sent = {r.detail["phone"]: r for r in _audit(server, "key.sms.sent")}
    assert {j.provider_id for j in jobs} == {r.detail["provider_id"] for r in sent.values()}
    assert _accepted_per_phone(twilio) == {p: 1 for p in HASSELT}


# --- 2. outage, then recovery ---------------------------------------------------------------------

def test_outage_is_retried_with_backoff_and_delivered_once_after_recovery(make_server, twilio, tmp_path):
    twilio.outage(True)
    server = _hasselt(make_server, twilio, sms={"alert_after": 2}).start()
    _upload(server, tmp_path)
    delivery = _delivery(server)
    _until(lambda: all(j.attempts >= 3 for j in _sms_jobs(server, delivery["id"])), "three failed attempts")
    assert twilio.messages == []
    retries = _audit(server, "key.retry")
    assert len(retries) >= 4 and {r.detail["target"] for r in retries} == set(HASSELT)
    assert all("503" in r.detail["error"] for r in retries)
    # pending between attempts, or sending while an attempt is in flight (recorded before the call)
    assert all(j.state in ("pending", "sending") and "503" in (j.last_error or "")
               for j in _sms_jobs(server, delivery["id"]))

    # Backoff: retry_initial 1s (x0.8..1.2), then doubling, capped at retry_max 2s (x0.8..1.2).
    for phone in HASSELT:
        times = [h.at for h in _posts(twilio) if h.to == phone]
        gaps = [b - a for a, b in zip(times, times[1:])]
        FIGURES["retry_gaps"].extend(gaps)
        assert gaps[0] >= 0.8 - 0.05, gaps
        assert all(g >= 1.6 - 0.05 for g in gaps[1:]), gaps
        assert all(g <= 2.4 + 1.5 for g in gaps), gaps  # cap plus one worker tick and slack

    twilio.outage(False)
    jobs = _wait_states(server, delivery["id"], {p: "delivered" for p in HASSELT})
    assert all(j.attempts > 1 for j in jobs)
    time.sleep(1.5)  # more than a worker tick: nothing more goes out
    assert _accepted_per_phone(twilio) == {p: 1 for p in HASSELT}
    assert len(_posts(twilio, 201)) == 2
    # alert_after = 2: the operator heard once per phone that it is still being retried.
    alerts = [j for j in server.app().outbox.jobs(delivery["id"]) if j.kind == "alert"]
    assert sorted(j.payload["phone"] for j in alerts) == sorted(HASSELT)
    assert all("still retrying" in j.payload["reason"] for j in alerts)
    assert _audit(server, "key.failed") == []


def test_correction_during_outage_sends_only_the_new_key_once(make_server, twilio, tmp_path):
    """A re-upload before collection replaces the waiting delivery: its SMS are cancelled."""
    twilio.outage(True)
    server = _hasselt(make_server, twilio).start()
    _upload(server, tmp_path, data=_csv(rows=10))
    [old] = server.app().db.query("SELECT id FROM deliveries")
    _until(lambda: all(j.attempts >= 1 for j in _sms_jobs(server, old["id"])), "a failed attempt each")
    corrected = _upload(server, tmp_path, data=_csv(rows=20))
    db = server.app().db
    new = db.query_one("SELECT id FROM deliveries WHERE state = 'published'")["id"]
    assert new != old["id"]
    assert db.query("SELECT 1 FROM secrets WHERE delivery_id = ?", (old["id"],)) == []
    assert {j.state for j in _sms_jobs(server, old["id"])} == {"cancelled"}
    twilio.outage(False)
    _wait_states(server, new, {p: "delivered" for p in HASSELT})
    time.sleep(1.2)
    assert _accepted_per_phone(twilio) == {p: 1 for p in HASSELT}
    passphrase = _passphrase_of(twilio)
    server.sftp("hasselt-clerk", f"get lijst.csv.age {tmp_path / 'got.age'}\n")
    out = io.BytesIO()
    with open(tmp_path / "got.age", "rb") as handle:
        decrypt(handle, out, passphrase)
    assert out.getvalue() == corrected


# --- 3. 429 with Retry-After ----------------------------------------------------------------------

def test_rate_limit_waits_at_least_retry_after_then_succeeds(make_server, twilio, tmp_path):
    twilio.rate_limit_next(1, retry_after=3)
    server = _hasselt(make_server, twilio).start()
    _upload(server, tmp_path)
    delivery = _delivery(server)
    twilio.wait_for_messages(2, timeout=WAIT)

    [limited] = [h for h in twilio.hits if h.status == 429]
    assert limited.method == "POST" and limited.to in HASSELT
    retry = next(h for h in _posts(twilio) if h.to == limited.to and h.at > limited.at)
    waited = retry.at - limited.done
    FIGURES["retry_after_wait"].append(waited)
    assert waited >= 3.0, f"retried {waited:.3f}s after a 429 with Retry-After: 3"
    assert waited < 3.0 + 2.5, waited  # and not much later: Retry-After beats the 1s backoff only
    assert retry.status == 201
    other = [h for h in _posts(twilio) if h.to != limited.to]
    assert [h.status for h in other] == [201]  # the other phone got its SMS on the first try

    jobs = _wait_states(server, delivery["id"], {p: "delivered" for p in HASSELT})
    assert {j.target: j.attempts for j in jobs} == {limited.to: 2, other[0].to: 1}
    [retry_record] = _audit(server, "key.retry")
    assert retry_record.detail["target"] == limited.to and "429" in retry_record.detail["error"]
    assert _accepted_per_phone(twilio) == {p: 1 for p in HASSELT}


# --- 4. permanent errors -------------------------------------------------------------------------------

def test_invalid_number_fails_without_retry_alerts_and_other_phone_still_gets_it(make_server, twilio, tmp_path):
    bad, good = HASSELT
    twilio.reject_number(bad, 21211)
    server = _hasselt(make_server, twilio).start()
    _upload(server, tmp_path)
    delivery = _delivery(server)
    jobs = _wait_states(server, delivery["id"], {bad: "failed", good: "delivered"})
    _note_latency(server, twilio)
    failed = next(j for j in jobs if j.target == bad)
    assert failed.attempts == 1 and "21211" in failed.last_error
    time.sleep(2.5)  # more than retry_max: still no second attempt
    assert len([h for h in _posts(twilio) if h.to == bad]) == 1
    assert _accepted_per_phone(twilio) == {good: 1}

    [record] = _audit(server, "key.failed")
    assert record.detail["target"] == bad and "21211" in record.detail["reason"]
    assert record.tenant == "hasselt" and record.delivery == delivery["id"]
    alerts = [j for j in server.app().outbox.jobs(delivery["id"]) if j.kind == "alert"]
    assert len(alerts) == 1 and alerts[0].payload["phone"] == bad and "21211" in alerts[0].payload["reason"]
    server.wait_for(r"ALERT for operator: .*lijst\.csv\.age")

    row = _status(server, delivery["id"])
    states = {m["to"]: m for m in row["messages"] if m["kind"] == "sms"}
    assert states[bad]["state"] == "failed" and "21211" in states[bad]["error"]
    assert states[good]["state"] == "delivered"
    assert any(m["kind"] == "alert" for m in row["messages"])
    text = _cli(server, "status")
    assert re.search(rf"sms\s+\{bad}\s+failed", text.stdout), text.stdout


def test_bad_credentials_are_permanent(make_server, twilio, tmp_path):
    server = _hasselt(make_server, twilio, env={"SLUIS_TWILIO_AUTH_TOKEN": "revoked-token-" + "0" * 18})
    server.start()
    _upload(server, tmp_path)
    delivery = _delivery(server)
    jobs = _wait_states(server, delivery["id"], {p: "failed" for p in HASSELT})
    assert all(j.attempts == 1 and "20003" in j.last_error for j in jobs)
    time.sleep(2.5)
    assert [h.status for h in _posts(twilio)] == [401, 401]
    assert twilio.messages == []
    assert len(_audit(server, "key.failed")) == 2
    assert len([j for j in server.app().outbox.jobs(delivery["id"]) if j.kind == "alert"]) == 2
    # The key is kept (the delivery is still waiting), so an operator can resend once fixed.
    assert server.app().db.query_one("SELECT 1 FROM secrets WHERE delivery_id = ?", (delivery["id"],))


def test_undelivered_status_is_final_and_alerts_without_resending(make_server, twilio, tmp_path):
    lost, good = HASSELT
    twilio.undeliver(lost)
    server = _hasselt(make_server, twilio).start()
    _upload(server, tmp_path)
    did = _delivery(server)["id"]
    jobs = _wait_states(server, did, {lost: "undelivered", good: "delivered"})
    _note_latency(server, twilio)
    assert next(j for j in jobs if j.target == lost).provider_status == "undelivered"
    [record] = _audit(server, "key.sms.undelivered")
    assert record.detail["phone"] == lost
    [alert] = [j for j in server.app().outbox.jobs(did) if j.kind == "alert"]
    assert alert.payload["phone"] == lost and "undelivered" in alert.payload["reason"]
    messages = {m["to"]: m for m in _status(server, did)["messages"] if m["kind"] == "sms"}
    assert messages[lost]["state"] == "undelivered" and messages[good]["state"] == "delivered"
    assert _accepted_per_phone(twilio) == {p: 1 for p in HASSELT}  # no automatic second SMS


# --- 5. crashes ---------------------------------------------------------------------------------------------

def test_sigkill_with_pending_jobs_delivers_once_after_restart(make_server, twilio, tmp_path):
    twilio.outage(True)
    server = _hasselt(make_server, twilio).start()
    _upload(server, tmp_path)
    delivery = _delivery(server)
    _until(lambda: all(j.attempts >= 1 for j in _sms_jobs(server, delivery["id"])), "a failed attempt each")
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    twilio.outage(False)
    time.sleep(1.2)
    assert twilio.messages == []  # nobody is sending while the server is down

    server.start()
    twilio.wait_for_messages(2, timeout=WAIT)
    _wait_states(server, delivery["id"], {p: "delivered" for p in HASSELT})
    time.sleep(1.5)
    assert _accepted_per_phone(twilio) == {p: 1 for p in HASSELT}
    assert server.app().audit.verify().ok


def _slow_sftp_put(server: SluisServer, source: Path, target: str) -> subprocess.Popen[str]:
    """OpenSSH sftp uploading at ~200 KB/s (-l is in Kbit/s), so the server can be killed mid-upload."""
    account = server.accounts["agency"]
    process = subprocess.Popen(["sftp", "-l", "1600", "-b", "-", "-i", str(account.key), "-P", str(server.port),
                                *SSH_OPTIONS, "agency@127.0.0.1"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdin is not None
    process.stdin.write(f"put {source} {target}\n")
    process.stdin.close()
    return process


def test_sigkill_mid_upload_leaves_no_delivery_no_jobs_and_sends_nothing(make_server, twilio, tmp_path):
    server = _hasselt(make_server, twilio).start()
    source = tmp_path / "lijst.csv"
    source.write_bytes(_csv(rows=60_000))  # ~2.7 MB: ~14 s at the throttled rate
    client = _slow_sftp_put(server, source, "/hasselt/lijst.csv")
    try:
        db = server.app().db
        _until(lambda: db.query("SELECT * FROM uploads"), "the upload to start")
        assert list((server.data_dir / "tmp").glob("*.part"))
        time.sleep(1.0)  # ~200 KB of the ~2.7 MB are on their way (the temporary is written in chunks)
        assert client.poll() is None, "the upload finished before the kill"
        server.stop(signal.SIGKILL)
        client.wait(timeout=WAIT)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=5)
    assert client.returncode != 0

    db = server.app().db
    assert db.query("SELECT * FROM deliveries") == []
    assert db.query("SELECT * FROM outbox") == [] and db.query("SELECT * FROM secrets") == []

    server.start()
    server.wait_for(r"removed \d+ leftovers of uploads interrupted")
    [abort] = _audit(server, "upload.abort")
    assert abort.actor == "sluis" and "interrupted" in abort.detail["reason"] and abort.tenant == "hasselt"
    assert abort.detail["name"] == "lijst.csv"
    db = server.app().db
    assert db.query("SELECT * FROM uploads") == [] and db.query("SELECT * FROM deliveries") == []
    assert db.query("SELECT * FROM outbox") == [] and db.query("SELECT * FROM secrets") == []
    assert list((server.data_dir / "tmp").glob("*.part")) == []
    time.sleep(1.5)  # more than a worker tick
    assert twilio.hits == []  # never published: no key ever leaves  # type: ignore[attr-defined]
    assert _audit(server, "delivery.publish") == []


# --- 6. no passphrase in clear at rest --------------------------------------------------------------

def test_passphrase_never_in_clear_under_data_dir_or_in_audit(make_server, twilio, tmp_path):
    twilio.outage(True)
    server = _hasselt(make_server, twilio).start()
    _upload(server, tmp_path)
    delivery = _delivery(server)
    _until(lambda: all(j.attempts >= 1 for j in _sms_jobs(server, delivery["id"])), "a failed attempt each")
    # state.db, -wal, -shm, blobs, config ... (on PostgreSQL: every row of the database)
    pending_snapshot = {**_read_tree(server.data_dir), "database": database_dump(server)}
    assert pending_snapshot["database"] or any(name.endswith("state.db-wal") for name in pending_snapshot)
    twilio.outage(False)
    _wait_states(server, delivery["id"], {p: "delivered" for p in HASSELT})
    passphrase = _passphrase_of(twilio)

    _assert_not_in(pending_snapshot, passphrase, "the data dir while SMS were pending")
    _assert_not_in({**_read_tree(server.data_dir), "database": database_dump(server)}, passphrase,
                   "the data dir after delivery")
    server.sftp("hasselt-clerk", f"get lijst.csv.age {tmp_path / 'got.age'}\n")
    _until(lambda: not server.app().db.query("SELECT 1 FROM secrets"), "the key to be destroyed")
    _assert_not_in({**_read_tree(server.data_dir), "database": database_dump(server)}, passphrase,
                   "the data dir after collection")

    export = _cli(server, "audit", "export", "--json")
    assert export.returncode == 0, export.stderr
    assert '"key.sms.sent"' in export.stdout
    _assert_not_in({"audit export": export.stdout.encode()}, passphrase, "the audit log")
    _assert_not_in({"serve.log": server.log_path.read_bytes()}, passphrase, "the server log")


# --- 7. resend, rate limit, destruction ---------------------------------------------------------------

def test_resend_is_audited_rate_limited_per_phone_and_impossible_once_key_destroyed(make_server, twilio, tmp_path):
    server = _hasselt(make_server, twilio, sms={"resend_interval": "2s"}).start()
    data = _upload(server, tmp_path)
    delivery = _delivery(server)
    did = delivery["id"]
    twilio.wait_for_messages(2, timeout=WAIT)
    _note_latency(server, twilio)
    passphrase = _passphrase_of(twilio)

    first = _cli(server, "key", "resend", did)
    first_at = time.monotonic()
    assert first.returncode == 0, first.stderr
    assert HASSELT[0] in first.stdout and HASSELT[1] in first.stdout
    again = _cli(server, "key", "resend", did)
    assert again.returncode == 1 and "resent less than 2s ago" in again.stderr, again.stderr
    unknown = _cli(server, "key", "resend", did, "--phone", "+32479999999")
    assert unknown.returncode == 1 and "not a registered phone" in unknown.stderr, unknown.stderr
    twilio.wait_for_messages(4, timeout=WAIT)
    assert _accepted_per_phone(twilio) == {p: 2 for p in HASSELT}
    assert _passphrase_of(twilio) == passphrase  # the same key, again

    time.sleep(max(0.0, 2.2 - (time.monotonic() - first_at)))
    one = _cli(server, "key", "resend", did, "--phone", HASSELT[1])
    assert one.returncode == 0, one.stderr
    assert HASSELT[1] in one.stdout and HASSELT[0] not in one.stdout
    twilio.wait_for_messages(5, timeout=WAIT)
    assert _accepted_per_phone(twilio) == {HASSELT[0]: 2, HASSELT[1]: 3}

    resends = _audit(server, "key.resend")
    assert [r.detail["phones"] for r in resends] == [list(HASSELT), [HASSELT[1]]]
    assert all(r.actor.startswith("admin:") and r.delivery == did for r in resends)
    assert len([j for j in _sms_jobs(server, did) if j.payload.get("resend")]) == 3

    # Collection (a full download) after every SMS went out destroys the key.
    _until(lambda: all(j.state != "pending" for j in _sms_jobs(server, did)), "all SMS to go out")
    server.sftp("hasselt-clerk", f"get lijst.csv.age {tmp_path / 'got.age'}\n")
    out = io.BytesIO()
    with open(tmp_path / "got.age", "rb") as handle:
        decrypt(handle, out, passphrase)
    assert out.getvalue() == data
    db = server.app().db
    assert db.query_one("SELECT state FROM deliveries WHERE id = ?", (did,))[0] == "collected"
    assert db.query("SELECT * FROM secrets WHERE delivery_id = ?", (did,)) == []
    time.sleep(2.2)  # past resend_interval, so the refusal is about the key
    late = _cli(server, "key", "resend", did)
    assert late.returncode == 1
    assert f"delivery {did} is collected: its key was destroyed and cannot be sent again" in late.stderr
    assert len(_audit(server, "key.resend")) == 2
    verify = _cli(server, "audit", "verify")  # CLI and server appended concurrently: chain intact
    assert verify.returncode == 0 and "audit log intact" in verify.stdout, verify.stdout + verify.stderr


def test_collection_before_the_sms_went_out_keeps_the_key_until_it_did(make_server, twilio, tmp_path):
    twilio.outage(True)
    server = _hasselt(make_server, twilio).start()
    _upload(server, tmp_path)
    did = _delivery(server)["id"]
    server.sftp("hasselt-clerk", f"get lijst.csv.age {tmp_path / 'got.age'}\n")
    db = server.app().db
    assert db.query_one("SELECT state FROM deliveries WHERE id = ?", (did,))[0] == "collected"
    assert db.query("SELECT 1 FROM secrets WHERE delivery_id = ?", (did,))  # still needed by the SMS
    twilio.outage(False)
    twilio.wait_for_messages(2, timeout=WAIT)
    _until(lambda: not db.query("SELECT 1 FROM secrets WHERE delivery_id = ?", (did,)), "the key to be destroyed")
    assert _accepted_per_phone(twilio) == {p: 1 for p in HASSELT}
    late = _cli(server, "key", "resend", did)
    assert late.returncode == 1 and "key was destroyed" in late.stderr


# --- 8. e-mail ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("starttls", [False, True], ids=["plain", "starttls"])
def test_email_notice_and_operator_alert_never_carry_the_passphrase(make_server, twilio, tmp_path, starttls):
    bad, good = HASSELT
    twilio.reject_number(bad, 21211)
    with SmtpStandIn(starttls=starttls) as smtp:
        email = {"enabled": True, "host": smtp.host, "port": smtp.port, "starttls": starttls,
                 "sender": "sluis@integratie.example", "operator": "ops@integratie.example",
                 "public_host": "sftp.integratie.example"}
        # The worker builds its MailServer without a CA file; the default context honours
        # SSL_CERT_FILE, so the server process trusts the stand-in's self-signed certificate.
        env = {"SSL_CERT_FILE": smtp.ca_file} if starttls else {}
        server = _hasselt(make_server, twilio, email=email, env=env, tenant_email="dienst@hasselt.example")
        server.start()
        _upload(server, tmp_path)
        did = _delivery(server)["id"]
        mails = smtp.wait_for_messages(2, timeout=WAIT)
        twilio.wait_for_messages(1, timeout=WAIT)
        passphrase = _passphrase_of(twilio)
        _wait_states(server, did, {bad: "failed", good: "delivered"})
        _note_latency(server, twilio)

    by_rcpt = {m.rcpt_tos: m for m in mails}
    assert set(by_rcpt) == {("dienst@hasselt.example",), ("ops@integratie.example",)}
    notice, alert = by_rcpt[("dienst@hasselt.example",)], by_rcpt[("ops@integratie.example",)]
    for mail in (notice, alert):
        assert mail.tls is starttls
        assert mail.mail_from == "sluis@integratie.example"
        _assert_not_in({"raw": mail.data, "body": mail.body.encode(), "subject": mail.message["Subject"].encode()},
                       passphrase, "an e-mail")
        assert CONTENT_MARKER not in mail.body
    assert "lijst.csv.age" in notice.message["Subject"] and "Er staat een bestand voor u klaar" in notice.message["Subject"]
    assert "lijst.csv.age" in notice.body and "hasselt" in notice.body
    assert "Beste," in notice.body and "Het wachtwoord om het te openen ontvangt u apart per sms" in notice.body
    assert "sftp.integratie.example" in notice.body
    assert EMAIL_DISCLAIMER in notice.body
    assert "Tussenkomst nodig" in alert.message["Subject"] and "lijst.csv.age" in alert.message["Subject"]
    assert bad in alert.body and "21211" in alert.body
    sent = _audit(server, "email.sent") + _audit(server, "alert.sent")
    assert sorted(r.event for r in sent) == ["alert.sent", "email.sent"]


def test_provider_copy_of_the_passphrase_is_erased_once_final(make_server, twilio, tmp_path):
    """Twilio keeps message bodies; once an SMS is final, sluis erases its body there."""
    twilio.polls_to_deliver = 1
    server = _hasselt(make_server, twilio).start()
    _upload(server, tmp_path)
    twilio.wait_for_messages(2, timeout=WAIT)
    delivery = _delivery(server)
    _wait_states(server, delivery["id"], {p: "delivered" for p in HASSELT})
    _until(lambda: all(j.redacted == 1 for j in _sms_jobs(server, delivery["id"])), "redaction")
    assert all(m.redacted for m in twilio.messages)
    assert {r.detail["phone"] for r in _audit(server, "key.sms.redacted")} == set(HASSELT)
    assert _accepted_per_phone(twilio) == {p: 1 for p in HASSELT}   # erasing sends nothing again


def test_redaction_can_be_turned_off(make_server, twilio, tmp_path):
    twilio.polls_to_deliver = 1
    server = _hasselt(make_server, twilio, sms={"redact": False}).start()
    _upload(server, tmp_path)
    twilio.wait_for_messages(2, timeout=WAIT)
    delivery = _delivery(server)
    _wait_states(server, delivery["id"], {p: "delivered" for p in HASSELT})
    time.sleep(2.5)   # longer than the redaction delay would be with retry_initial = 1s
    assert not any(m.redacted for m in twilio.messages)
    assert _audit(server, "key.sms.redacted") == []

"""A key job's state and audit agree with what the provider accepted, and the key goes only to the
tenant's phones at send time. A real `sluis serve`, real OpenSSH sftp uploads, the real `twilio`
library against the Twilio stand-in (which can accept a message and hold its answer back).

Issue 8: "a passphrase retry goes to a phone number that was removed from the tenant in between"
and "after a kill during the SMS call, a job shows `cancelled, attempts 0` although the phone
received the passphrase".
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sluis.keydelivery.outbox import CANCELLED, DELIVERED, MAYBE_SENT, PENDING, SENDING, SENT
from sluis.server.core.deliveries import fetch
from sluis.server.core.directory import Actor
from tests.support.clients import require_binary
from tests.support.library import sluis, upload
from tests.support.server import SluisServer
from tests.support.sms import twilio_server
from tests.support.twilio_standin import TwilioStandIn
from tests.support.waiting import wait_until

FIRST, SECOND = "+32470123456", "+32471234567"
ADDED = "+32472345678"
WAIT = 20.0


@pytest.fixture
def srv(make_server: Any, twilio: TwilioStandIn) -> SluisServer:
    require_binary("sftp")
    return twilio_server(make_server, twilio, tenant="hasselt", phones=(FIRST, SECOND),
                         crypto={"scrypt_log_n": 10})


def _upload(srv: SluisServer, tmp_path: Path, name: str = "lijst.csv") -> str:
    (tmp_path / name).write_bytes(b"naam;voornaam\nJanssens;Maria\n")
    srv.sftp("agency", f"put {tmp_path / name} /hasselt/{name}\n")
    [row] = srv.app().db.query("SELECT id FROM deliveries WHERE state = 'published'")
    return row[0]


def _sms(srv: SluisServer, delivery_id: str) -> dict[str, Any]:
    return {j.target: j for j in srv.app().outbox.jobs(delivery_id) if j.kind == "sms"}


def _alerts(srv: SluisServer, delivery_id: str) -> list[Any]:
    return [j for j in srv.app().outbox.jobs(delivery_id) if j.kind == "alert"]


def _audit(srv: SluisServer, event: str) -> list[Any]:
    return [r for r in srv.app().audit.records() if r.event == event]


def _per_phone(twilio: TwilioStandIn) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in twilio.messages:
        counts[message.to] = counts.get(message.to, 0) + 1
    return counts


def _cli(srv: SluisServer, *args: str) -> subprocess.CompletedProcess[str]:
    return sluis(srv.config, *args, env=srv.env)


def _in_flight(srv: SluisServer, twilio: TwilioStandIn, delivery_id: str) -> Any:
    """Wait until the first SMS is accepted by the stand-in and its answer held; return its job."""
    wait_until(lambda: twilio.held == 1, "an accepted SMS whose answer is held", WAIT)
    job = wait_until(lambda: next((j for j in _sms(srv, delivery_id).values() if j.state == SENDING), None),
                     "a job in state sending", WAIT)
    assert job.attempts == 1 and job.last_attempt_at, job
    assert [m.to for m in twilio.messages] == [job.target]   # the phone has the passphrase
    return job


# --- a kill during the SMS call ----------------------------------------------------------------------

def test_kill_during_sms_call_then_restart_retries_while_the_delivery_waits(srv, twilio, tmp_path):
    twilio.hold_next(1, seconds=25)
    srv.start()
    delivery = _upload(srv, tmp_path)
    job = _in_flight(srv, twilio, delivery)
    assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
    # durable before the call: the job says an attempt is under way, not "cancelled, attempts 0"
    after_kill = _sms(srv, delivery)[job.target]
    assert (after_kill.state, after_kill.attempts) == (SENDING, 1)
    twilio.release()

    srv.start()
    [record] = wait_until(lambda: _audit(srv, "key.sms.interrupted"), "the interrupted attempt audited", WAIT)
    assert record.detail["phone"] == job.target and record.detail["outcome"] == PENDING
    assert record.detail["attempt"] == 1 and record.detail["attempted_at"] == job.last_attempt_at
    jobs = wait_until(lambda: (lambda j: j if all(x.state == DELIVERED for x in j.values()) else None)(
        _sms(srv, delivery)), "both SMS delivered after the restart", WAIT)
    assert jobs[job.target].attempts == 2 and "cut short" in (
        [r for r in srv.app().audit.records() if r.event == "key.sms.interrupted"][0].detail["reason"])
    other = SECOND if job.target == FIRST else FIRST
    assert jobs[other].attempts == 1
    # a duplicate is acceptable, a lost SMS is not: the interrupted phone got it twice, the other once
    assert _per_phone(twilio) == {job.target: 2, other: 1}
    sent = [r for r in _audit(srv, "key.sms.sent") if r.detail["phone"] == job.target]
    assert [r.detail["attempt"] for r in sent] == [2]
    assert srv.app().audit.verify().ok


def test_kill_during_sms_call_after_withdrawal_is_maybe_sent_never_cancelled(srv, twilio, tmp_path):
    twilio.hold_next(1, seconds=25)
    srv.start()
    delivery = _upload(srv, tmp_path)
    job = _in_flight(srv, twilio, delivery)
    srv.sftp("agency", "rm /hasselt/lijst.csv\n")               # withdrawn while the call is in flight
    jobs = _sms(srv, delivery)
    other = SECOND if job.target == FIRST else FIRST
    assert (jobs[job.target].state, jobs[job.target].attempts) == (SENDING, 1)   # revocation left it alone
    assert (jobs[other].state, jobs[other].attempts) == (CANCELLED, 0)           # never handed over
    srv.stop(signal.SIGKILL)
    twilio.release()

    srv.start()
    [record] = wait_until(lambda: _audit(srv, "key.sms.interrupted"), "the interrupted attempt audited", WAIT)
    assert record.detail["outcome"] == MAYBE_SENT and record.detail["phone"] == job.target
    settled = _sms(srv, delivery)[job.target]
    assert (settled.state, settled.attempts) == (MAYBE_SENT, 1)
    assert "may have accepted it" in settled.last_error and "removed" in settled.last_error
    [alert] = [a for a in _alerts(srv, delivery) if a.payload["phone"] == job.target]
    assert "may have been sent" in alert.payload["reason"]
    time.sleep(1.5)  # more than a worker tick: not retried
    assert _per_phone(twilio) == {job.target: 1}
    assert srv.app().db.query("SELECT 1 FROM secrets") == []
    status = _cli(srv, "status", "--all")
    assert re.search(rf"sms\s+\{job.target}\s+maybe_sent\b.*attempts=1", status.stdout), status.stdout


def test_withdrawn_during_sms_call_records_what_the_provider_accepted(srv, twilio, tmp_path):
    twilio.hold_next(1, seconds=25)
    srv.start()
    delivery = _upload(srv, tmp_path)
    job = _in_flight(srv, twilio, delivery)
    srv.sftp("agency", "rm /hasselt/lijst.csv\n")
    twilio.release()
    settled = wait_until(lambda: (lambda j: j if j.state != SENDING else None)(_sms(srv, delivery)[job.target]),
                         "the held answer recorded", WAIT)
    assert settled.state in (SENT, DELIVERED) and settled.attempts == 1 and settled.provider_id
    [record] = _audit(srv, "key.sms.sent")
    assert record.detail["provider_id"] == settled.provider_id and record.detail["attempt"] == 1


# --- the key is bound to the tenant's phones at send time -----------------------------------------------

def test_phone_removed_after_publishing_never_gets_the_key_and_added_one_is_told(srv, twilio, tmp_path):
    twilio.outage(True)
    srv.start()
    delivery = _upload(srv, tmp_path)
    wait_until(lambda: all(j.attempts >= 1 for j in _sms(srv, delivery).values()), "a failed attempt each", WAIT)
    changed = _cli(srv, "tenant", "set", "hasselt", "--phone", SECOND, "--phone", ADDED)   # FIRST removed
    assert changed.returncode == 0, changed.stderr
    twilio.outage(False)

    jobs = wait_until(lambda: (lambda j: j if j[FIRST].state == CANCELLED and j[SECOND].state == DELIVERED
                               else None)(_sms(srv, delivery)), "the removed phone cancelled", WAIT)
    assert "no longer a registered phone of hasselt" in jobs[FIRST].last_error
    assert set(jobs) == {FIRST, SECOND}                         # the added phone was not sent the key
    [cancelled] = _audit(srv, "key.sms.cancelled")
    assert cancelled.detail["phone"] == FIRST and cancelled.detail["why"] == "phone_removed"
    alerts = {a.payload["phone"]: a for a in _alerts(srv, delivery)}
    assert "no longer a registered phone" in alerts[FIRST].payload["reason"]
    assert f"sluis key resend {delivery} --phone {ADDED}" in alerts[ADDED].payload["reason"]
    [added] = _audit(srv, "key.phone.added")
    assert added.detail["phone"] == ADDED
    srv.wait_for(r"ALERT for operator")
    time.sleep(2.5)  # more than retry_max: nothing more goes out, and the added phone is told once
    assert _per_phone(twilio) == {SECOND: 1}
    assert len([a for a in _alerts(srv, delivery) if a.payload.get("added_phone") == ADDED]) == 1

    # the operator decides: the added phone gets the key on request
    resent = _cli(srv, "key", "resend", delivery, "--phone", ADDED)
    assert resent.returncode == 0, resent.stderr
    twilio.wait_for_messages(2, timeout=WAIT)
    assert _per_phone(twilio) == {SECOND: 1, ADDED: 1}


# --- the same rules in process (the drop-box core and the outbox, no provider call) ----------------------

def _claim(app: Any, job: Any) -> Any:
    delivery = fetch(app.db, "id = ?", (job.delivery_id,))[0]
    return app.outbox.claim(job, delivery.tenant_id, "genk")


def test_claim_records_the_attempt_and_revocation_leaves_it_in_flight(lib):
    _srv, app, _clock = lib
    delivery = upload(app)
    [job] = [j for j in app.outbox.jobs(delivery.id) if j.kind == "sms"]
    claim = _claim(app, job)
    assert claim is not None and claim.attempt == 1 and claim.passphrase
    [sending] = [j for j in app.outbox.jobs(delivery.id) if j.kind == "sms"]
    assert (sending.state, sending.attempts) == (SENDING, 1) and sending.last_attempt_at
    assert _claim(app, sending) is None                     # claimed once only
    assert app.dropbox.remove(delivery, "withdrawn", actor="agency")
    [still] = [j for j in app.outbox.jobs(delivery.id) if j.kind == "sms"]
    assert still.state == SENDING                           # not "cancelled, attempts 0"
    [(settled, state)] = app.outbox.reconcile()
    assert state == MAYBE_SENT and settled.id == job.id
    [after] = [j for j in app.outbox.jobs(delivery.id) if j.kind == "sms"]
    assert (after.state, after.attempts) == (MAYBE_SENT, 1)
    [record] = [r for r in app.audit.records() if r.event == "key.sms.interrupted"]
    assert record.detail["outcome"] == MAYBE_SENT and record.detail["attempt"] == 1
    assert any(a.kind == "alert" and "may have been sent" in a.payload["reason"] for a in app.outbox.jobs(delivery.id))


def test_reconcile_retries_an_interrupted_attempt_while_the_delivery_waits(lib):
    _srv, app, _clock = lib
    delivery = upload(app)
    [job] = [j for j in app.outbox.jobs(delivery.id) if j.kind == "sms"]
    assert _claim(app, job) is not None
    [(_, state)] = app.outbox.reconcile()
    assert state == PENDING
    [after] = [j for j in app.outbox.jobs(delivery.id) if j.kind == "sms"]
    assert (after.state, after.attempts) == (PENDING, 1) and "cut short" in after.last_error
    assert app.outbox.reconcile() == []                     # nothing left in flight
    second = _claim(app, after)
    assert second is not None and second.attempt == 2


def test_claim_refuses_a_phone_removed_since_publishing(lib):
    _srv, app, _clock = lib
    delivery = upload(app)
    [job] = [j for j in app.outbox.jobs(delivery.id) if j.kind == "sms"]
    app.directory.update_tenant(Actor("admin:test"), "genk", phones=[ADDED], email=None, fmt=None)
    assert _claim(app, job) is None
    [after] = [j for j in app.outbox.jobs(delivery.id) if j.kind == "sms"]
    assert (after.state, after.attempts) == (CANCELLED, 0) and "no longer a registered phone" in after.last_error
    alerts = [a.payload for a in app.outbox.jobs(delivery.id) if a.kind == "alert"]
    assert {a["phone"] for a in alerts} == {job.target, ADDED}

"""Two `sluis serve` processes on one database drain one outbox: a live process's jobs are never
sent by the other, and when one is killed in the middle of an SMS call the other sends every job
it held: a second SMS only for the one in flight at the kill. Real processes, real sftp uploads,
the real `twilio` library against the stand-in (which holds the first answer back). On PostgreSQL:
several processes share a database there (a SQLite database has one `serve`).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from sluis.keydelivery.outbox import DELIVERED, PENDING, SENDING
from tests.support.clients import require_binary
from tests.support.server import SluisServer
from tests.support.sms import twilio_server
from tests.support.twilio_standin import TwilioStandIn
from tests.support.waiting import wait_until

HASSELT = ("+32470123456", "+32471234567")
TONGEREN = ("+32472345678", "+32473456789")
WAIT = 30.0


@pytest.fixture
def pair(make_server: Any, twilio: TwilioStandIn) -> Any:
    require_binary("sftp")
    first = twilio_server(make_server, twilio, tenant="hasselt", phones=HASSELT, crypto={"scrypt_log_n": 10})
    first.add_tenant("tongeren", phones=TONGEREN)
    second = first.sibling("b")
    yield first, second
    second.close()


def _put(srv: SluisServer, tmp_path: Path, tenant: str) -> None:
    (tmp_path / f"{tenant}.csv").write_bytes(b"naam;voornaam\nJanssens;Maria\n")
    srv.sftp("agency", f"put {tmp_path / tenant}.csv /{tenant}/lijst.csv\n")


def _sms(srv: SluisServer) -> dict[str, Any]:
    return {j.target: j for j in srv.app().outbox.jobs() if j.kind == "sms"}


def _per_phone(twilio: TwilioStandIn) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in twilio.messages:
        counts[message.to] = counts.get(message.to, 0) + 1
    return counts


@pytest.mark.parametrize("engine", ["postgresql"])
def test_kill_one_process_mid_sms_and_the_other_sends_every_job(pair, twilio, tmp_path, engine):
    a, b = pair
    twilio.hold_next(1, seconds=25)
    a.start()
    _put(a, tmp_path, "hasselt")
    wait_until(lambda: twilio.held == 1, "an accepted SMS whose answer is held", WAIT)
    jobs = wait_until(lambda: (lambda j: j if any(x.state == SENDING for x in j.values()) else None)(_sms(a)),
                      "a job in state sending", WAIT)
    [in_flight] = [j for j in jobs.values() if j.state == SENDING]
    [waiting] = [j for j in jobs.values() if j.target != in_flight.target]
    assert waiting.state == PENDING and waiting.claimed_by == in_flight.claimed_by   # taken by A, queued

    b.start()
    _put(b, tmp_path, "tongeren")                    # B works: it sends what nobody holds
    twilio.wait_for_messages(3, timeout=WAIT)
    wait_until(lambda: all(_sms(b)[p].state == DELIVERED for p in TONGEREN), "tongeren's SMS delivered", WAIT)
    time.sleep(1.5)                                  # more than a worker tick of B: A's jobs stay A's
    held = _sms(b)
    assert held[waiting.target].state == PENDING and held[waiting.target].claimed_by == in_flight.claimed_by
    assert _per_phone(twilio) == {in_flight.target: 1, **{p: 1 for p in TONGEREN}}

    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    twilio.release()
    done = wait_until(lambda: (lambda j: j if all(x.state == DELIVERED for x in j.values()) else None)(_sms(b)),
                      "every SMS delivered by the surviving process", WAIT, context=lambda: b.log[-3000:])
    # a duplicate only for the job in flight at the kill; every other phone exactly once
    assert _per_phone(twilio) == {in_flight.target: 2, waiting.target: 1, **{p: 1 for p in TONGEREN}}
    assert done[in_flight.target].attempts == 2 and done[waiting.target].attempts == 1
    [record] = [r for r in b.app().audit.records() if r.event == "key.sms.interrupted"]
    assert record.detail["phone"] == in_flight.target and record.detail["outcome"] == PENDING
    assert b.app().audit.verify().ok

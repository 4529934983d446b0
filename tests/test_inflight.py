"""InFlight: what shutdown waits for (server/sftp/inflight.py), bounded, follow-on work included."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from sluis.server.sftp.inflight import InFlight


def test_settle_waits_for_writes_started_by_what_it_waits_for():
    inflight, done = InFlight(), []

    async def main() -> int:
        connection = object()
        inflight.opened(connection)
        gate = threading.Event()
        # a write in a thread that ends only when released; the connection's end starts another
        inflight.write_soon("first", lambda: (gate.wait(5), done.append("first")))
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: (inflight.closed(connection),
                                       inflight.write_soon("second", done.append, "second"), gate.set()))
        return await inflight.settle(5)

    assert asyncio.run(main()) == 0
    assert sorted(done) == ["first", "second"] and inflight.pending == 0


def test_settle_is_bounded_and_says_what_is_left(caplog):
    inflight = InFlight()

    async def main() -> tuple[int, float]:
        inflight.opened(object())            # never closed
        inflight.write_soon("failing write", _fail)
        started = time.monotonic()
        left = await inflight.settle(0.3)
        return left, time.monotonic() - started

    with caplog.at_level(logging.ERROR, logger="sluis.inflight"):
        left, waited = asyncio.run(main())
    assert left == 1 and 0.25 < waited < 3
    assert any("failing write failed" in r.getMessage() for r in caplog.records)


def _fail() -> None:
    raise OSError("disk full")

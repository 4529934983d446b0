"""Audit appends per second: the keyed chain (HMAC-SHA256) against the old unkeyed one (SHA-256).

Each append is one record in its own transaction (BEGIN IMMEDIATE, WAL, synchronous=FULL), as
`AuditLog.record` does in the server, so fsync dominates; the hash alone is measured apart.
Not a timed test. Run: .venv/bin/python bench/audit_append.py [--count 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from sluis.server.core.audit import AuditLog, record_hash
from sluis.server.core.auditkey import AuditKey
from sluis.server.core.clock import SystemClock
from sluis.server.core.state import open_database

DETAIL = {"user": "genk-clerk", "op": "open", "path": "/lijst.csv.age", "reason": "test", "bytes": 123456}


def appends_per_second(key: AuditKey | None, count: int, workdir: Path) -> float:
    db = open_database(workdir / f"bench-{os.getpid()}-{time.monotonic_ns()}.db")
    audit = AuditLog(db, SystemClock(), key)  # type: ignore[arg-type]  # None: the old unkeyed chain
    started = time.perf_counter()
    for n in range(count):
        audit.record("bench.event", actor="bench", tenant="genk", source="127.0.0.1:50000", n=n, **DETAIL)
    elapsed = time.perf_counter() - started
    assert audit.verify().ok or key is None
    db.close()
    return count / elapsed


def hashes_per_second(key: AuditKey | None, count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        record_hash(n, "2026-11-30T17:00:00.000000Z", "bench.event", "bench", "genk", None, "cli",
                    DETAIL, "0" * 64, key)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    key = AuditKey(os.urandom(32))
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, k in (("unkeyed SHA-256", None), ("keyed HMAC-SHA256", key)):
            appends = [appends_per_second(k, args.count, Path(tmp)) for _ in range(args.rounds)]
            hashes = hashes_per_second(k, 50_000)
            results[name] = (statistics.median(appends), hashes)
    print("| chain | appends/s (median) | hash alone /s |")
    print("|---|---|---|")
    for name, (appends, hashes) in results.items():
        print(f"| {name} | {appends:,.0f} | {hashes:,.0f} |")


if __name__ == "__main__":
    main()

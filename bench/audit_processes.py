"""Audit appends per second with several processes appending to one chain at once.

Each process builds the app from one sluis.toml (so SQLite's state.db, or the PostgreSQL database
of `[database] url`) and appends its share of records, one transaction each, as the server does
(`AuditLog.record`: PostgreSQL serialises appenders with a transaction advisory lock, SQLite with
BEGIN IMMEDIATE). All start at one instant; the rate is records / (last end - start). The chain
is verified afterwards. Not a timed test; tests/test_pg_races.py runs it small.

  .venv/bin/python bench/audit_processes.py --engine sqlite --processes 2 --count 2000
  .venv/bin/python bench/audit_processes.py --engine postgresql --processes 2 --count 2000
  .venv/bin/python bench/audit_processes.py --config /srv/sluis/sluis.toml ...   (an existing setup)
(--engine postgresql starts a throwaway cluster, tests/support/pg.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from contend import ROOT, race, span, throwaway_setup, wait_for


def worker(config: Path, count: int, start_at: float, tag: str) -> None:
    from sluis.config import load_settings
    from sluis.server.app import build_app

    app = build_app(load_settings(config, os.environ))
    try:
        started = wait_for(start_at)
        for n in range(count):
            app.audit.record("bench.append", actor="bench", tenant="genk", source=tag, n=n)
        print(json.dumps({"started": started, "ended": time.time(), "count": count}), flush=True)
    finally:
        app.close()


def run(config: Path, processes: int, count: int, lead: float = 3.0) -> dict[str, float]:
    """Start `processes` appenders of `count` records in all; their combined rate."""
    shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    results = race(__file__, [str(share) for share in shares], config, lead)
    elapsed = span(results)
    return {"records": sum(r["count"] for r in results), "seconds": elapsed,
            "per_second": sum(r["count"] for r in results) / elapsed}


def verify(config: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "sluis.server.cli.main", "-c", str(config), "audit", "verify",
                             "--no-file"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"audit verify failed: {result.stdout}{result.stderr}")
    return result.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="an existing setup (default: a throwaway one)")
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--count", type=int, default=2000, help="records in all")
    parser.add_argument("--fsync-off", action="store_true",
                        help="the throwaway PostgreSQL cluster without fsync (as the tests run it)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        config, count, start_at, tag = args.worker
        worker(Path(config), int(count), float(start_at), tag)
        return
    if args.config:
        print(json.dumps(run(args.config, args.processes, args.count)))
        print(verify(args.config))
        return
    with throwaway_setup(args.engine, args.fsync_off) as config:
        figures = run(config, args.processes, args.count)
        print(json.dumps({"engine": args.engine, "processes": args.processes,
                          "fsync": args.engine == "sqlite" or not args.fsync_off, **figures}))
        print(verify(config))


if __name__ == "__main__":
    main()

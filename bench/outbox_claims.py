"""Outbox claims per second with several processes draining one outbox at once.

A throwaway setup (or --config) gets one delivery and --count alert jobs. Each process builds the
app and loops: take a batch of due jobs with a lease (`Outbox.take`: PostgreSQL `FOR UPDATE SKIP
LOCKED`, SQLite BEGIN IMMEDIATE), then settle each (`Outbox.finish` in a transaction of its own, as `cancelled` so it is not due again,
as the worker records an outcome). No provider is called: this measures the claim path. All
start at one instant; the rate is jobs / (last end - start). Afterwards every job must have been
taken exactly once (the ids the processes report are disjoint and complete).

  .venv/bin/python bench/outbox_claims.py --engine postgresql --processes 2 --count 2000 --batch 20
  .venv/bin/python bench/outbox_claims.py --engine sqlite --processes 2 --count 2000 --batch 1
(--engine postgresql starts a throwaway cluster, tests/support/pg.py: durable unless --fsync-off.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

from contend import ROOT, race, span, throwaway_setup, wait_for


def worker(config: Path, batch: int, start_at: float, tag: str) -> None:
    from sluis.config import load_settings
    from sluis.keydelivery.outbox import CANCELLED
    from sluis.server.app import build_app

    app = build_app(load_settings(config, os.environ))
    try:
        started, taken = wait_for(start_at), []
        while jobs := app.outbox.take(batch):
            for job in jobs:
                with app.db.writer() as tx:
                    if not app.outbox.finish(tx, job, state=CANCELLED, last_error="bench"):
                        raise RuntimeError(f"{tag} lost the lease of job {job.id}")
                taken.append(job.id)
        print(json.dumps({"started": started, "ended": time.time(), "ids": taken}), flush=True)
    finally:
        app.close()


def prepare(config: Path, count: int) -> None:
    """One tenant, sender, protocol and delivery; `count` alert jobs for it."""
    sys.path.insert(0, str(ROOT))
    from sluis.config import load_settings
    from sluis.server.app import build_app
    from sluis.server.core.directory import Actor
    from tests.support.library import upload

    app = build_app(load_settings(config, os.environ))
    try:
        actor = Actor("bench", "bench")
        app.directory.add_tenant(actor, "genk", phones=["+32470123456"])
        app.protocols.register(actor, app.directory.tenant("genk"), signed=date(2021, 5, 1),
                               effective=date(2021, 6, 2))
        pub = config.parent / "bench.pub"
        if not pub.exists():
            import asyncssh

            pub.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh"))
        app.directory.add_user(actor, "agency", role="sender", keys=[(pub.read_text(), str(pub))])
        delivery = upload(app)
        with app.db.writer() as tx:
            for n in range(count):
                app.outbox.alert(tx, delivery.id, reason=f"bench {n}")
    finally:
        app.close()


def run(config: Path, processes: int, batch: int, lead: float = 3.0) -> dict[str, float]:
    results = race(__file__, [str(batch)] * processes, config, lead)
    ids = [i for r in results for i in r["ids"]]
    if len(ids) != len(set(ids)):
        raise RuntimeError(f"{len(ids) - len(set(ids))} jobs were taken twice")
    elapsed = span(results)
    return {"jobs": len(ids), "per_process": [len(r["ids"]) for r in results], "seconds": round(elapsed, 3),
            "per_second": round(len(ids) / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--count", type=int, default=2000, help="jobs in all")
    parser.add_argument("--batch", type=int, default=20, help="jobs taken per claim transaction")
    parser.add_argument("--fsync-off", action="store_true",
                        help="the throwaway PostgreSQL cluster without fsync (as the tests run it)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        config, batch, start_at, tag = args.worker
        worker(Path(config), int(batch), float(start_at), tag)
        return
    with throwaway_setup(args.engine, args.fsync_off, {"policy": {"content": "any"}}) as config:
        prepare(config, args.count)
        figures = run(config, args.processes, args.batch)
        print(json.dumps({"engine": args.engine, "processes": args.processes, "batch": args.batch,
                          "fsync": args.engine == "sqlite" or not args.fsync_off, **figures}))


if __name__ == "__main__":
    main()

"""What the bench scripts that race processes on one setup share (audit_processes.py,
outbox_claims.py): a common start instant, the children run and their results collected, and a
throwaway setup on SQLite or on a throwaway PostgreSQL cluster (tests/support/pg.py)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent


def wait_for(start_at: float) -> float:
    """Sleep until `start_at` (a common start: every process contends from its first step);
    returns the time it really started."""
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    return time.time()


def race(script: str, shares: list[str], config: Path, lead: float = 3.0) -> list[dict[str, Any]]:
    """Run `script --worker CONFIG SHARE START TAG` once per share, all starting `lead` seconds
    from now; the JSON each child prints last, in order."""
    start_at = time.time() + lead
    children = [subprocess.Popen([sys.executable, script, "--worker", str(config), share, str(start_at),
                                  f"proc-{i}"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
                for i, share in enumerate(shares)]
    results = []
    for child in children:
        out, _ = child.communicate(timeout=600)
        if child.returncode != 0:
            raise RuntimeError(f"{Path(script).name}: a worker failed ({child.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def span(results: list[dict[str, Any]]) -> float:
    """Seconds from the first worker's start to the last one's end."""
    return max(r["ended"] for r in results) - min(r["started"] for r in results)


@contextlib.contextmanager
def throwaway_setup(engine: str, fsync_off: bool, overrides: dict[str, Any] | None = None) -> Iterator[Path]:
    """`sluis init` in a temp dir, on SQLite or on a new database of a throwaway PostgreSQL
    cluster (durable unless `fsync_off`); yields the sluis.toml."""
    sys.path.insert(0, str(ROOT))
    from sluis.server.cli.init import init_setup
    from tests.support.pg import Cluster, find_bin_dir

    overrides = dict(overrides or {})
    cluster = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if engine == "postgresql":
                bin_dir = find_bin_dir()
                if bin_dir is None:
                    raise SystemExit("PostgreSQL is not installed")
                cluster = Cluster(bin_dir, durable=not fsync_off)
                overrides["database"] = {"url": cluster.new_database()}
            yield init_setup(Path(tmp) / "sluis", overrides or None)
        finally:
            if cluster is not None:
                cluster.stop()

"""`--profile`: one extra, untimed sluis upload and download under py-spy, and a summary of
where the busy samples fall (event loop or threads, hottest functions)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from clients import Client
from procs import stop_group
from servers import Server


def profile_sluis(up: Server, down: Server, client: Client, src: Path, cwd: Path,
                  outdir: Path, py_spy: str) -> dict:
    """One extra, untimed upload + download of sluis under py-spy (it pauses the process to
    sample, so it must not touch the timed rounds). Writes collapsed stacks and returns the
    hottest functions."""
    outdir.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    name = "profile.bin"
    for op in ("upload", "download"):
        raw = outdir / f"sluis-{op}.txt"
        spy = subprocess.Popen([py_spy, "record", "--pid", str(up.pid), "--rate", "500",
                                "--format", "raw", "--output", str(raw), "--threads"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
        try:
            time.sleep(1.0)   # let py-spy attach
            if op == "upload":
                client.upload(up, src, name, cwd)
            else:
                got = cwd / "got-profile.age"
                client.download(down, name, got, cwd)
                got.unlink()
            time.sleep(0.3)
        finally:
            os.killpg(spy.pid, signal.SIGINT)
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_group(spy)
        report[op] = hot_functions(raw) if raw.exists() else {"error": spy.stderr.read().decode()[-500:]}
        report[op]["collapsed_stacks"] = str(raw)
    return report


IDLE_LEAVES = re.compile(r"^(_worker \(concurrent/futures/thread\.py\)|\w*Selector\.select \(selectors\.py\))$")
PLUMBING = re.compile(r"^(thread \(|<module> |main \(server/cli/main|cmd_serve |run \(asyncio/runners"
                      r"|Runner\.run |BaseEventLoop\.(run_until_complete|run_forever|_run_once) "
                      r"|Handle\._run |Thread\.(run|_bootstrap|_bootstrap_inner) |_worker \(|WorkItem\.run )")


def hot_functions(raw: Path, top: int = 15) -> dict:
    """Where the busy samples of py-spy's collapsed stacks fall.

    A sample whose innermost frame is an idle wait (a thread-pool worker waiting for work, the
    event loop in select()) is counted as idle; py-spy does not always tell those apart. The
    percentages are of the busy samples: self (innermost frame), inclusive (any frame on the
    stack, event-loop plumbing left out), and per thread kind (event loop or thread pool).
    """
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    thread_n: dict[str, int] = {}
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if IDLE_LEAVES.match(frames[-1]):
            idle += n
            continue
        kind = "event loop" if "MainThread" in frames[0] else "thread pool"
        thread_n[kind] = thread_n.get(kind, 0) + n
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            if not PLUMBING.match(f):
                incl_n[f] = incl_n.get(f, 0) + n
    busy = total - idle

    def pick(d: dict[str, int], k: int = top) -> list[list]:
        return [[f, round(100 * n / busy, 1)]
                for f, n in sorted(d.items(), key=lambda kv: -kv[1])[:k]] if busy else []

    return {"samples": total, "idle_samples": idle, "busy_samples": busy,
            "busy_by_thread_percent": dict(pick(thread_n)),
            "self_percent": pick(self_n), "inclusive_percent": pick(incl_n, 25)}



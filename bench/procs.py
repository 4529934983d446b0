"""Process plumbing for bench/run.py: /proc readings (CPU, RSS, PSS), a sampler of a server's
process tree, ports, and starting and stopping process groups."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

MIB = 1024 * 1024
GIB = 1024 * MIB
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc helpers

def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """utime+stime of PID (all its threads) plus cutime+cstime of its reaped children."""
    f = _stat_fields(pid)
    if f is None:
        raise RuntimeError(f"process {pid} is gone")
    return sum(int(x) for x in f[11:15]) / CLK_TCK


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    """PID's live descendants (not PID itself)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids: list[int] = []
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                try:
                    kids += [int(x) for x in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
                except OSError:
                    pass
        except OSError:
            continue
        found += kids
        todo += kids
    return found


def reset_hwm(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux: echo 5 > /proc/PID/clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


class TreeSampler:
    """Samples a server's process tree every `interval` s while a transfer runs.

    peak_rss: the largest sum of VmRSS over the live processes of the tree in one sample.
    peak_hwm: the largest sum, in one sample, of the live processes' VmHWM (each process's own
    peak so far; the root's HWM is reset before the transfer). It also catches spikes between
    samples, and is an upper bound of the tree's true peak (the processes may have peaked at
    different moments). For sluis, a single process, it is exact.
    """

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss_kib = 0
        self.peak_hwm_kib = 0
        self.pids_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = hwm = 0
        for pid in [self.root, *descendants(self.root)]:
            st = _status_kib(pid, ("VmRSS", "VmHWM"))
            if not st:
                continue
            self.pids_seen.add(pid)
            rss += st.get("VmRSS", 0)
            hwm += st.get("VmHWM", 0)
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        self.peak_hwm_kib = max(self.peak_hwm_kib, hwm)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeSampler":
        reset_hwm(self.root)
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def wait_no_descendants(pid: int, timeout: float = 15.0) -> None:
    """Wait until the per-connection processes have exited and been reaped (their CPU time is
    then in the root's cutime/cstime)."""
    deadline = time.monotonic() + timeout
    while descendants(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


# --------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, logfile: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early ({proc.returncode}); see {logfile}:\n"
                               + logfile.read_text()[-3000:])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s; see {logfile}")


def stop_group(proc: subprocess.Popen | None) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            # the leader is gone; make sure nothing else of its group lingers
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        except subprocess.TimeoutExpired:
            continue


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return res


SLUIS_EXE: str | None = None   # --sluis-exe: another build to measure (a before/after comparison)


def sluis_exe() -> str:
    if SLUIS_EXE:
        return SLUIS_EXE
    cand = REPO / ".venv" / "bin" / "sluis"
    if cand.exists():
        return str(cand)
    found = shutil.which("sluis")
    if not found:
        sys.exit("bench: no sluis command (expected .venv/bin/sluis)")
    return found


def pss_kib(pids: list[int]) -> int:
    """Sum of the processes' proportional set size (shared pages split between their users)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total


def tree(pid: int) -> list[int]:
    return [pid, *descendants(pid)]


def idle_rss_mib(pid: int) -> float:
    return sum(_status_kib(p, ("VmRSS",)).get("VmRSS", 0) for p in tree(pid)) / 1024


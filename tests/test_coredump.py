"""`sluis serve` is not dumpable (server/hardening.py), checked by what the kernel shows, not by a
log line. For a non-dumpable process the kernel refuses a reader of the same uid without
CAP_SYS_PTRACE its /proc/PID/environ (a ptrace-mode check), makes /proc/PID/* root-owned, and
writes no core on SIGSEGV. Server, control and reader all run with our uid and no capabilities
(as root: uid 0 with an empty bounding set), so only the dumpable flag decides what the reader
sees; a plain Python process started like the server is the control.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.waiting import wait_until

ROOT = os.geteuid() == 0
PLAIN_CORE_PATTERN = Path("/proc/sys/kernel/core_pattern").read_text().strip() in ("core", "core.%p")


PR_CAPBSET_DROP = 24
LAST_CAP = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
LIBC = ctypes.CDLL(None, use_errno=True)


def plain_process() -> None:
    """preexec_fn: no capabilities after exec (root keeps uid 0 but gets an empty bounding set),
    and the core limit as high as it goes, so only the process itself can forbid cores."""
    if ROOT:
        for cap in range(LAST_CAP + 1):
            if LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), f"cannot drop capability {cap}")
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def readable_without_caps(path: Path) -> bool:
    """Whether a process of our uid without capabilities (no CAP_SYS_PTRACE) can read `path`."""
    result = subprocess.run(["cat", str(path)], capture_output=True, timeout=30, preexec_fn=plain_process)
    assert result.returncode == 0 or b"Permission denied" in result.stderr, result.stderr
    return result.returncode == 0


def owner_and_uid(pid: int) -> tuple[int, int]:
    """(owner of /proc/PID/status, the process's real uid as the status text says)."""
    status = Path(f"/proc/{pid}/status")
    real_uid = int(re.search(r"^Uid:\s+(\d+)", status.read_text(), re.M)[1])
    return status.stat().st_uid, real_uid


def core_limit(pid: int) -> str:
    return re.search(r"^Max core file size\s+(\S+\s+\S+)", Path(f"/proc/{pid}/limits").read_text(), re.M)[1]


def segfault(process: subprocess.Popen, cwd: Path) -> list[str]:
    """SIGSEGV the process; return the core files it left in its working directory."""
    process.send_signal(signal.SIGSEGV)
    assert process.wait(30) == -signal.SIGSEGV
    return sorted(p.name for p in cwd.iterdir() if p.name.startswith("core"))


def test_control_process_is_dumpable(tmp_path):
    """The observables below do tell: a plain process started the same way shows the opposite."""
    cwd = tmp_path / "control"
    cwd.mkdir()
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=cwd,
                               preexec_fn=plain_process)
    try:
        wait_until(lambda: b"time.sleep" in Path(f"/proc/{process.pid}/cmdline").read_bytes(), "the exec")
        assert owner_and_uid(process.pid) == (os.geteuid(), os.geteuid())
        assert readable_without_caps(Path(f"/proc/{process.pid}/environ"))
        assert core_limit(process.pid).split() != ["0", "0"]
        cores = segfault(process, cwd)
        if PLAIN_CORE_PATTERN:     # with a piped core_pattern (systemd-coredump) the core goes elsewhere
            assert cores, "the control process left no core: this check could not see one from sluis either"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_serve_is_not_dumpable(make_server):
    server = make_server().standard()
    server.popen_extra = {"preexec_fn": plain_process, "cwd": server.data_dir}
    pid = server.start().process.pid
    assert not readable_without_caps(Path(f"/proc/{pid}/environ"))     # a same-uid process cannot peek
    assert owner_and_uid(pid) == (0, os.geteuid())                      # /proc/PID handed to root
    assert core_limit(pid).split() == ["0", "0"]
    assert segfault(server.process, server.data_dir) == []


def test_forbid_core_dumps_clears_the_flag_in_process():
    code = ("from sluis.server.hardening import dumpable, forbid_core_dumps\n"
            "before = dumpable(); forbid_core_dumps(); print(before, dumpable())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.split() == ["True", "False"]

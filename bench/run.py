#!/usr/bin/env python3
"""sluis against OpenSSH's own sftp-server, side by side in one run.

Both servers run on 127.0.0.1 and are driven by the same OpenSSH `sftp` client with the same
cipher: sluis (`sluis serve`) and a throw-away `sshd` whose sftp subsystem is the real
/usr/lib/openssh/sftp-server. Each round uploads a random file to each server and downloads it
again (sluis: the recipient collects NAME.age), interleaved sluis, openssh, sluis, openssh...
While a transfer runs a thread samples the server's process tree (RSS every 50 ms, plus each
process's VmHWM), and the server's CPU time is taken from /proc/PID/stat before and after.

Medians over the rounds are printed as a markdown table and written as JSON. This is a
measurement, not a test: it never fails on a number. See bench/README.md.

    .venv/bin/python bench/run.py [--size-mib 256] [--rounds 5] [--out bench/results/latest.json]

Needs root (sshd drops privileges per connection), openssh-client, openssh-server and
openssh-sftp-server (Debian: apt-get install openssh-client openssh-server openssh-sftp-server).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
GIB = 1024 * MIB
CLK_TCK = os.sysconf("SC_CLK_TCK")
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
TENANT = "bench"
PHONE = "+32470123456"


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


def sluis_exe() -> str:
    cand = REPO / ".venv" / "bin" / "sluis"
    if cand.exists():
        return str(cand)
    found = shutil.which("sluis")
    if not found:
        sys.exit("bench: no sluis command (expected .venv/bin/sluis)")
    return found


# --------------------------------------------------------------------------- servers

@dataclass
class Server:
    name: str
    port: int
    user: str
    key: Path
    proc: subprocess.Popen | None = None
    logfile: Path | None = None
    cipher: str = ""
    mac: str = ""
    kex: str = ""
    hostkey_alg: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def start_sluis(work: Path, keys: dict[str, Path]) -> tuple[Server, Server]:
    """Returns (sender view, recipient view) of one sluis server."""
    exe = sluis_exe()
    d = work / "sluis"
    run([exe, "init", str(d)])
    conf = d / "sluis.toml"
    port = free_port()
    text = conf.read_text()
    text, n1 = re.subn(r'(?m)^listen = .*$', f'listen = "127.0.0.1:{port}"', text)
    text, n2 = re.subn(r'(?m)^yearly_limit = .*$', "yearly_limit = 366", text)
    if n1 != 1 or n2 != 1:
        raise RuntimeError(f"could not set [server] listen / [policy] yearly_limit in {conf}")
    conf.write_text(text)
    c = [exe, "-c", str(conf)]
    run(c + ["tenant", "add", TENANT, "--phone", PHONE])
    run(c + ["tenant", "protocol", TENANT, "--signed", "2021-01-01", "--effective", "2021-01-02"])
    run(c + ["user", "add", "up", "--role", "sender", "--key", f"{keys['up']}.pub"])
    run(c + ["user", "add", "down", "--role", "recipient", "--tenant", TENANT,
             "--key", f"{keys['down']}.pub"])
    logfile = work / "sluis-serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUIS_")}
    with open(logfile, "wb") as fh:
        proc = subprocess.Popen(c + ["serve"], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    up = Server("sluis", port, "up", keys["up"], proc, logfile)
    down = Server("sluis", port, "down", keys["down"], proc, logfile)
    up.extra["config"] = str(conf)
    try:
        wait_port(port, proc, logfile)
        deadline = time.monotonic() + 10
        while "sluis listening on" not in logfile.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    except BaseException:
        stop_group(proc)
        raise
    return up, down


def start_openssh(work: Path, keys: dict[str, Path]) -> Server:
    for exe, pkg in ((SSHD, "openssh-server"), (SFTP_SERVER, "openssh-sftp-server")):
        if not os.access(exe, os.X_OK):
            sys.exit(f"bench: {exe} missing: apt-get install {pkg}")
    if os.geteuid() != 0:
        sys.exit("bench: the OpenSSH side runs its own sshd, which needs root")
    d = work / "openssh"
    (d / "files").mkdir(parents=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_ed25519_key")])
    shutil.copy(f"{keys['up']}.pub", d / "authorized_keys")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege-separation dir
    port = free_port()
    cfg = d / "sshd_config"
    cfg.write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {d / 'host_ed25519_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
X11Forwarding no
AllowTcpForwarding no
Subsystem sftp {SFTP_SERVER}
# sshd starts the subsystem as `$SHELL -c sftp-server`; Debian's bash then reads ~/.bashrc for
# ssh sessions unless SHLVL says it is nested. Skip it, so no login scripts are measured.
SetEnv SHLVL=1
LogLevel INFO
""")
    run([SSHD, "-t", "-f", str(cfg)])
    logfile = work / "sshd.log"
    with open(logfile, "wb") as fh:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    srv = Server("openssh", port, "root", keys["up"], proc, logfile)
    srv.extra["files"] = str(d / "files")
    try:
        wait_port(port, proc, logfile)
    except BaseException:
        stop_group(proc)
        raise
    return srv


# --------------------------------------------------------------------------- the client

def ssh_opts(srv: Server, cipher: str, kex: str) -> list[str]:
    opts = ["-F", "/dev/null", "-P", str(srv.port), "-i", str(srv.key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "Compression=no", "-o", "LogLevel=ERROR"]
    if cipher:
        opts += ["-o", f"Ciphers={cipher}"]
    if kex:
        opts += ["-o", f"KexAlgorithms={kex}"]
    return opts


KEX = "curve25519-sha256"   # set from --kex
CLIENT_ENV = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID")}


def sftp_batch(srv: Server, cipher: str, commands: list[str], cwd: Path,
               verbose: bool = False) -> tuple[float, float, str]:
    """Run `sftp -b` with COMMANDS; return (wall seconds, client CPU seconds, stderr)."""
    batch = cwd / "batch.txt"
    batch.write_text("\n".join(commands) + "\n")
    cmd = ["sftp", *ssh_opts(srv, cipher, KEX), "-b", str(batch)]
    if verbose:
        cmd.insert(1, "-v")
    cmd.append(f"{srv.user}@127.0.0.1")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=CLIENT_ENV,
                         stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if res.returncode != 0:
        raise RuntimeError(f"sftp to {srv.name} as {srv.user} failed ({res.returncode}): "
                           f"{commands}\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return wall, client_cpu, res.stderr


def probe(srv: Server, cipher: str, cwd: Path) -> None:
    """Connect once with -v and record the negotiated algorithms (also warms the server up)."""
    _, _, err = sftp_batch(srv, cipher, ["pwd"], cwd, verbose=True)
    m = re.search(r"kex: client->server cipher: (\S+) MAC: (\S+)", err)
    srv.cipher, srv.mac = (m.group(1), m.group(2)) if m else ("?", "?")
    m = re.search(r"kex: algorithm: (\S+)", err)
    srv.kex = m.group(1) if m else "?"
    m = re.search(r"kex: host key algorithm: (\S+)", err)
    srv.hostkey_alg = m.group(1) if m else "?"


def connect_only(srv: Server, cipher: str, cwd: Path) -> float:
    return sftp_batch(srv, cipher, ["pwd"], cwd)[0]


def timed_transfer(srv: Server, cipher: str, commands: list[str], cwd: Path,
                   nbytes: int) -> dict:
    wait_no_descendants(srv.pid)
    cpu0 = cpu_seconds(srv.pid)
    with TreeSampler(srv.pid) as sampler:
        wall, client_cpu, _ = sftp_batch(srv, cipher, commands, cwd)
    wait_no_descendants(srv.pid)
    time.sleep(0.05)
    cpu = cpu_seconds(srv.pid) - cpu0
    return {
        "seconds": wall,
        "mib_per_s": nbytes / MIB / wall,
        "server_cpu_s": cpu,
        "server_cpu_s_per_gib": cpu / (nbytes / GIB),
        "client_cpu_s": client_cpu,
        "client_cpu_s_per_gib": client_cpu / (nbytes / GIB),
        "peak_rss_mib": sampler.peak_rss_kib / 1024,
        "peak_hwm_mib": sampler.peak_hwm_kib / 1024,
        "processes": len(sampler.pids_seen),
    }


def idle_rss_mib(pid: int) -> float:
    return sum(_status_kib(p, ("VmRSS",)).get("VmRSS", 0) for p in [pid, *descendants(pid)]) / 1024


# --------------------------------------------------------------------------- sluis specifics

def sluis_passphrase(logfile: Path, name: str, timeout: float = 60.0) -> str:
    pat = re.compile(r"\[sms console-\d+\] to \+\d+: .*? voor " + re.escape(name)
                     + r" \(" + TENANT + r"\): (\S+) \.")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = pat.search(logfile.read_text(errors="replace"))
        if m:
            return m.group(1)
        time.sleep(0.2)
    raise RuntimeError(f"no passphrase for {name} in {logfile} after {timeout}s")


def sluis_upload(up: Server, cipher: str, src: Path, name: str, cwd: Path, nbytes: int) -> dict:
    cmds = [f"put {src} {TENANT}/{name}"]
    try:
        return timed_transfer(up, cipher, cmds, cwd, nbytes)
    except RuntimeError as exc:
        # The yearly limit (raised to 366 in the config) should never bite; if it does, grant
        # one delivery beyond it and retry once, so that the bench still runs.
        log(f"sluis upload refused, granting an allowance and retrying: {str(exc)[:300]}")
        run([sluis_exe(), "-c", up.extra["config"], "delivery", "allow", TENANT,
             "--reason", "bench"])
        res = timed_transfer(up, cipher, cmds, cwd, nbytes)
        res["needed_allowance"] = True
        return res


def verify_sluis(down_file: Path, logfile: Path, name: str, want_sha: str) -> dict:
    from sluis.server.formats.age import decrypt  # the venv's editable install

    passphrase = sluis_passphrase(logfile, name)
    h = hashlib.sha256()

    class _Hasher:
        def write(self, b: bytes) -> int:
            h.update(b)
            return len(b)

    t0 = time.perf_counter()
    with open(down_file, "rb") as fh:
        size = decrypt(fh, _Hasher(), passphrase)  # type: ignore[arg-type]
    secs = time.perf_counter() - t0
    ok = h.hexdigest() == want_sha
    return {"name": name, "plaintext_bytes": size, "sha256": h.hexdigest(), "ok": ok,
            "decrypt_seconds": secs}


# --------------------------------------------------------------------------- profiling

def profile_sluis(up: Server, down: Server, cipher: str, src: Path, client: Path, nbytes: int,
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
                sftp_batch(up, cipher, [f"put {src} {TENANT}/{name}"], client)
            else:
                got = client / "got-profile.age"
                sftp_batch(down, cipher, [f"get {name}.age {got}"], client)
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


# --------------------------------------------------------------------------- main

def make_source(path: Path, nbytes: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        left = nbytes
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            fh.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarise(rounds: list[dict]) -> dict:
    out: dict = {}
    for srv in ("sluis", "openssh"):
        for op in ("upload", "download"):
            rs = [r[srv][op] for r in rounds]
            out.setdefault(srv, {})[op] = {
                k: med([x[k] for x in rs])
                for k in ("mib_per_s", "seconds", "server_cpu_s", "server_cpu_s_per_gib",
                          "client_cpu_s", "client_cpu_s_per_gib", "peak_rss_mib", "peak_hwm_mib")
            }
        out[srv]["connect_seconds"] = med([r[srv]["connect_seconds"] for r in rounds])
    ratios: dict = {}
    for op in ("upload", "download"):
        s, o = out["sluis"][op], out["openssh"][op]
        ratios[op] = {k: (s[k] / o[k] if o[k] else float("nan"))
                      for k in ("mib_per_s", "peak_rss_mib", "peak_hwm_mib",
                                "server_cpu_s_per_gib", "client_cpu_s_per_gib")}
        # the same ratio taken per round, then the median: less sensitive to drift
        ratios[op]["mib_per_s_per_round_median"] = med(
            [r["sluis"][op]["mib_per_s"] / r["openssh"][op]["mib_per_s"] for r in rounds])
    out["ratio_sluis_over_openssh"] = ratios
    return out


def markdown(summary: dict, meta: dict) -> str:
    s, o, r = summary["sluis"], summary["openssh"], summary["ratio_sluis_over_openssh"]
    rows = [
        ("upload throughput, MiB/s", "upload", "mib_per_s", 1),
        ("download throughput, MiB/s", "download", "mib_per_s", 1),
        ("upload: server peak RSS, MiB", "upload", "peak_hwm_mib", 1),
        ("download: server peak RSS, MiB", "download", "peak_hwm_mib", 1),
        ("upload: server CPU s per GiB", "upload", "server_cpu_s_per_gib", 2),
        ("download: server CPU s per GiB", "download", "server_cpu_s_per_gib", 2),
        ("upload: client (sftp + ssh) CPU s per GiB", "upload", "client_cpu_s_per_gib", 2),
        ("download: client (sftp + ssh) CPU s per GiB", "download", "client_cpu_s_per_gib", 2),
    ]
    lines = [
        f"Medians of {meta['rounds']} rounds, {meta['size_mib']} MiB random file, "
        f"OpenSSH sftp client, cipher {meta['cipher']}, loopback, {meta['cpus']} CPUs "
        f"({meta['date']}).",
        "",
        "| measure | sluis | OpenSSH sftp-server | sluis / OpenSSH |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, op, key, nd in rows:
        lines.append(f"| {label} | {s[op][key]:.{nd}f} | {o[op][key]:.{nd}f} | "
                     f"{r[op][key]:.2f} |")
    lines.append(f"| connect + auth + exit (no transfer), s | {s['connect_seconds']:.2f} | "
                 f"{o['connect_seconds']:.2f} | {s['connect_seconds'] / o['connect_seconds']:.2f} |")
    lines.append(f"| idle server RSS, MiB | {meta['idle_rss_mib']['sluis']:.1f} | "
                 f"{meta['idle_rss_mib']['openssh']:.1f} | "
                 f"{meta['idle_rss_mib']['sluis'] / meta['idle_rss_mib']['openssh']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256, help="file size (default 256)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.json"),
                    help="JSON results file (default bench/results/latest.json)")
    ap.add_argument("--cipher", default="aes128-gcm@openssh.com",
                    help="cipher forced on both connections ('' = let them negotiate)")
    ap.add_argument("--kex", default="curve25519-sha256",
                    help="key exchange forced on both ('' = negotiate; OpenSSH would pick the "
                         "slower post-quantum sntrup761x25519, which asyncssh lacks)")
    ap.add_argument("--workdir", default=None,
                    help="parent of the temp dir (default $TMPDIR); both servers write there")
    ap.add_argument("--profile", metavar="DIR", default=None,
                    help="after the timed rounds, one extra sluis upload + download under "
                         "py-spy; collapsed stacks go to DIR, the hottest functions to the JSON")
    ap.add_argument("--py-spy", default="py-spy", help="py-spy executable (for --profile)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) afterwards")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.size_mib < 1:
        ap.error("--rounds and --size-mib must be at least 1")
    if args.rounds > 300:
        ap.error("--rounds at most 300 (the yearly limit is 366 per tenant)")
    for tool in ("sftp", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} missing: apt-get install openssh-client")

    global KEX
    KEX = args.kex

    def _terminate(signum, frame):   # SIGTERM/SIGHUP: unwind through the finally below
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    nbytes = args.size_mib * MIB
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="sluis-bench-", dir=args.workdir))
    log(f"work dir {work}")
    procs: list[subprocess.Popen] = []
    try:
        keys = {}
        for who in ("up", "down"):
            keys[who] = work / f"{who}_ed25519"
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys[who])])
        client = work / "client"
        client.mkdir()
        src = client / "source.bin"
        log(f"writing {args.size_mib} MiB of random data")
        src_sha = make_source(src, nbytes)

        up, down = start_sluis(work, keys)
        procs.append(up.proc)
        ossh = start_openssh(work, keys)
        procs.append(ossh.proc)
        log(f"sluis pid {up.pid} on port {up.port}; sshd pid {ossh.pid} on port {ossh.port}")

        for srv in (up, down, ossh):
            probe(srv, args.cipher, client)
        algs = {(s.cipher, s.mac) for s in (up, down, ossh)}
        if len(algs) != 1:
            log(f"WARNING: different ciphers negotiated: {algs}")
        log(f"negotiated: sluis {up.cipher}/{up.mac} kex {up.kex} hostkey {up.hostkey_alg}; "
            f"openssh {ossh.cipher}/{ossh.mac} kex {ossh.kex} hostkey {ossh.hostkey_alg}")
        time.sleep(0.5)
        idle = {"sluis": idle_rss_mib(up.pid), "openssh": idle_rss_mib(ossh.pid)}

        rounds: list[dict] = []
        verification = None
        files = Path(ossh.extra["files"])
        for i in range(1, args.rounds + 1):
            rnd: dict = {"round": i}
            name = f"r{i}.bin"
            for srv_name in ("sluis", "openssh"):
                got = client / f"got-{srv_name}-{name}"
                if srv_name == "sluis":
                    res_up = sluis_upload(up, args.cipher, src, name, client, nbytes)
                    res_down = timed_transfer(down, args.cipher, [f"get {name}.age {got}"],
                                              client, nbytes)
                    conn = connect_only(down, args.cipher, client)
                    if verification is None:
                        verification = verify_sluis(got, up.logfile, f"{name}.age", src_sha)
                        log(f"verify: {name}.age decrypts to sha256 "
                            f"{verification['sha256'][:16]}... "
                            f"{'OK' if verification['ok'] else 'MISMATCH'}")
                        if not verification["ok"]:
                            raise RuntimeError("sluis download does not decrypt to the upload")
                    res_down["stored_bytes"] = got.stat().st_size
                else:
                    dst = files / name
                    res_up = timed_transfer(ossh, args.cipher, [f"put {src} {dst}"], client,
                                            nbytes)
                    res_down = timed_transfer(ossh, args.cipher, [f"get {dst} {got}"], client,
                                              nbytes)
                    conn = connect_only(ossh, args.cipher, client)
                    if i == 1 and sha256_file(got) != src_sha:
                        raise RuntimeError("openssh download differs from the upload")
                    dst.unlink()
                got.unlink()
                rnd[srv_name] = {"upload": res_up, "download": res_down, "connect_seconds": conn}
                log(f"round {i} {srv_name:7s}: up {res_up['mib_per_s']:7.1f} MiB/s "
                    f"cpu {res_up['server_cpu_s']:5.2f}s peak {res_up['peak_hwm_mib']:6.1f} MiB | "
                    f"down {res_down['mib_per_s']:7.1f} MiB/s cpu {res_down['server_cpu_s']:5.2f}s "
                    f"peak {res_down['peak_hwm_mib']:6.1f} MiB")
            rounds.append(rnd)

        profile = None
        if args.profile:
            spy = shutil.which(args.py_spy)
            if not spy:
                log(f"--profile: no py-spy ({args.py_spy}); pip install py-spy, or --py-spy PATH")
            else:
                log("profiling one extra sluis upload + download with py-spy (not timed)")
                profile = profile_sluis(up, down, args.cipher, src, client, nbytes,
                                        Path(args.profile), spy)
                for op, rep in profile.items():
                    log(f"py-spy, sluis {op}: {rep.get('busy_samples', 0)} busy samples, "
                        f"{rep.get('busy_by_thread_percent')}; hottest (self % of busy):")
                    for f, pct in rep.get("self_percent", [])[:10]:
                        log(f"  {pct:5.1f}%  {f}")

        summary = summarise(rounds)
        meta = {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "size_mib": args.size_mib,
            "rounds": args.rounds,
            "cipher": up.cipher if len(algs) == 1 else str(sorted(algs)),
            "kex": up.kex if up.kex == ossh.kex else f"sluis {up.kex}, openssh {ossh.kex}",
            "negotiated": {s.name + ":" + s.user: {"cipher": s.cipher, "mac": s.mac,
                                                   "kex": s.kex, "hostkey": s.hostkey_alg}
                           for s in (up, down, ossh)},
            "idle_rss_mib": idle,
            "cpus": os.cpu_count(),
            "loadavg_before_after": [list(load_before), list(os.getloadavg())],
            "kernel": platform.release(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
            "sftp_client": "OpenSSH sftp -b, default buffer (32 KiB) and 64 requests in flight",
            "sluis_version": _version("sluis"),
            "asyncssh_version": _version("asyncssh"),
            "order": "each round: sluis upload, sluis download, openssh upload, openssh download",
            "timing": "wall clock of the whole sftp -b run (connect, auth, transfer, exit)",
            "memory": "peak_hwm_mib: largest sampled (every 50 ms) sum over the server's live "
                      "processes of their VmHWM (root HWM reset before each transfer); "
                      "peak_rss_mib: largest sampled sum of VmRSS",
            "cpu": "utime+stime (+ reaped children) of sluis serve / the sshd listener, "
                   "delta over the transfer",
        }
        result = {"meta": meta, "summary": summary, "verification": verification,
                  "rounds": rounds}
        if profile is not None:
            result["profile"] = profile
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {out}")
        print(markdown(summary, meta))
        return 0
    finally:
        for p in procs:
            stop_group(p)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())

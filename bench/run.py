#!/usr/bin/env python3
"""sluis against OpenSSH's own sftp-server, side by side in one run (`make bench`).

Both servers run on 127.0.0.1: sluis (`sluis serve`) and a throw-away `sshd` whose sftp subsystem
is the real /usr/lib/openssh/sftp-server. Every round uploads a random file to each server and
downloads it again with each client (OpenSSH sftp with chacha20-poly1305, with aes128-gcm, and
PuTTY psftp), interleaved: for each client, sluis then OpenSSH. Then come memory per idle
session (100 SFTP sessions held open), server CPU per login, and 8 concurrent downloads.
Medians and min-max of the rounds are printed as markdown tables ready to paste, and written as
JSON. A measurement, not a test: it never fails on a number. See bench/README.md.

Needs root (sshd drops privileges per connection), openssh-client, openssh-server,
openssh-sftp-server, putty-tools (psftp, puttygen) and paramiko (the test extra). Runs under an
exclusive lock on /tmp/sluis-bench.lock (taken here; an enclosing `flock` on it is honoured).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clients import Client, OpenSSH, Psftp, TransferTimeout
from report import markdown, summarise
from extras import concurrent_downloads, idle_sessions, login_cpu
from procs import GIB, MIB, REPO, TreeSampler, cpu_seconds, idle_rss_mib, log, run, sluis_exe, \
    stop_group, wait_no_descendants
from servers import IDLE_SESSIONS, TENANT, Server, discard, start_openssh, start_sluis

LOCK = Path("/tmp/sluis-bench.lock")
CLIENTS = {"chacha": "chacha20-poly1305@openssh.com", "gcm": "aes128-gcm@openssh.com", "psftp": ""}
PARTS = ("transfers", "sessions", "logins", "concurrent")


# --------------------------------------------------------------------------- the lock

def _ancestors() -> set[int]:
    pids, pid = set(), os.getppid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            break
    return pids


def _lock_holders(path: Path) -> set[int]:
    ino = os.stat(path).st_ino
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if len(f) > 5 and f[1] == "FLOCK" and f[5].rsplit(":", 1)[-1] == str(ino):
            holders.add(int(f[4]))
    return holders


def take_bench_lock():
    """Never two benchmarks at once on the shared machine: hold /tmp/sluis-bench.lock (wait for
    it), unless a parent process (`flock /tmp/sluis-bench.lock make bench`) already holds it."""
    fh = open(LOCK, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fh
    except BlockingIOError:
        if _lock_holders(LOCK) & _ancestors():
            log(f"{LOCK} is held by a parent process: running under it")
            return fh
    log(f"waiting for {LOCK} (another benchmark is running)")
    fcntl.flock(fh, fcntl.LOCK_EX)
    return fh


# --------------------------------------------------------------------------- one transfer

def timed(srv: Server, action, nbytes: int) -> dict:
    wait_no_descendants(srv.pid)
    cpu0 = cpu_seconds(srv.pid)
    timed_out = False
    with TreeSampler(srv.pid) as sampler:
        try:
            wall, client_cpu = action()
        except TransferTimeout as slow:
            log(f"WARNING: {slow}; recorded as a lower bound")
            wall, client_cpu, timed_out = slow.wall, slow.cpu, True
    wait_no_descendants(srv.pid)
    time.sleep(0.05)
    cpu = cpu_seconds(srv.pid) - cpu0
    return {"seconds": wall, "mb_per_s": nbytes / 1e6 / wall, "server_cpu_s_per_gib": cpu / (nbytes / GIB),
            "client_cpu_s_per_gib": client_cpu / (nbytes / GIB),
            "peak_hwm_mib": sampler.peak_hwm_kib / 1024, "peak_rss_mib": sampler.peak_rss_kib / 1024,
            "timed_out": timed_out}


def warm_up(client: Client, pairs, src: Path, cwd: Path) -> None:
    """One untimed upload and download per server before the rounds. The first writes into memory
    this VM has not touched since boot cost several times the later ones (seen here: 2.1 against
    0.2 s/GiB of kernel time for the same 256 MiB written by dd), and would land on whichever
    server happened to go first. OpenSSH's sftp does it: psftp's uploads to sftp-server can stall."""
    for srv_up, srv_down in pairs:
        got = cwd / f"warm-{srv_up.name}.out"
        try:
            client.upload(srv_up, src, "warm.bin", cwd)
            client.download(srv_down, "warm.bin", got, cwd)
        except TransferTimeout as slow:
            log(f"WARNING: warm-up: {slow}")
        got.unlink(missing_ok=True)
        discard(srv_up, "warm.bin")
    log("warm-up transfers done (not counted)")


def passphrase(logfile: Path, name: str, timeout: float = 60.0) -> str:
    import re
    pat = re.compile(r"\[sms console-\d+\] to \+\d+: .*? voor " + re.escape(name) + r" \(" + TENANT + r"\): (\S+) \.")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = pat.search(logfile.read_text(errors="replace"))
        if m:
            return m.group(1)
        time.sleep(0.2)
    raise RuntimeError(f"no passphrase for {name} in {logfile} after {timeout}s")


def check_download(srv: Server, got: Path, name: str, want: str) -> None:
    """Byte for byte: OpenSSH's copy equals the source; sluis's .age decrypts to it."""
    h = hashlib.sha256()
    if srv.name == "sluis":
        from sluis.server.formats.age import decrypt

        class _Hasher:
            def write(self, b: bytes) -> int:
                h.update(b)
                return len(b)

        with open(got, "rb") as fh:
            decrypt(fh, _Hasher(), passphrase(srv.logfile, f"{name}.age"))  # type: ignore[arg-type]
    else:
        with open(got, "rb") as fh:
            while chunk := fh.read(4 * MIB):
                h.update(chunk)
    if h.hexdigest() != want:
        raise RuntimeError(f"{srv.name}: the download of {name} does not match the upload")


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


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256, help="file size of the transfers (default 256)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--clients", default="chacha,gcm,psftp",
                    help="comma list of chacha, gcm (OpenSSH sftp with that cipher), psftp (default all)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma list of {', '.join(PARTS)} (default all)")
    ap.add_argument("--sessions", type=int, default=IDLE_SESSIONS, help="idle sessions held open (default 100)")
    ap.add_argument("--logins", type=int, default=20, help="logins measured per server (default 20)")
    ap.add_argument("--streams", type=int, default=8, help="concurrent downloads (default 8)")
    ap.add_argument("--concurrent-mib", type=int, default=64, help="size of each concurrent download (default 64)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.json"),
                    help="JSON results file (default bench/results/latest.json)")
    ap.add_argument("--kex", default="curve25519-sha256",
                    help="key exchange forced on OpenSSH's client ('' = negotiate; it would pick "
                         "sntrup761x25519, which asyncssh lacks)")
    ap.add_argument("--workdir", default=None, help="parent of the temp dir (default $TMPDIR)")
    ap.add_argument("--profile", metavar="DIR", default=None,
                    help="after the rounds, one extra sluis upload + download under py-spy")
    ap.add_argument("--py-spy", default="py-spy", help="py-spy executable (for --profile)")
    ap.add_argument("--sluis-exe", default=None,
                    help="the sluis command to measure (default .venv/bin/sluis): compare two builds")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) afterwards")
    args = ap.parse_args(argv)
    chosen = [c for c in args.clients.split(",") if c]
    parts = [p for p in args.parts.split(",") if p]
    if not chosen and "transfers" in parts or any(c not in CLIENTS for c in chosen):
        ap.error(f"--clients: a comma list of {', '.join(CLIENTS)}")
    if any(p not in PARTS for p in parts):
        ap.error(f"--parts: a comma list of {', '.join(PARTS)}")
    if not 1 <= args.rounds <= 60 or args.size_mib < 1:
        ap.error("--rounds 1..60 (every round publishes deliveries under the yearly limit), --size-mib >= 1")
    for tool in ("sftp", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} missing: apt-get install openssh-client")
    if "psftp" in chosen and not Psftp.available():
        sys.exit("bench: psftp/puttygen missing: apt-get install putty-tools (or --clients chacha,gcm)")

    if args.sluis_exe:
        import procs
        procs.SLUIS_EXE = args.sluis_exe
    lock = take_bench_lock()

    def _terminate(signum, frame):   # SIGTERM/SIGHUP: unwind through the finally below
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    nbytes = args.size_mib * MIB
    import clients as clients_module
    # Slower than 5 MB/s is broken, not slow: the transfers run at 100-700 MB/s here, and a
    # stalled one (TransferTimeout) would otherwise hold the whole run for minutes.
    clients_module.TIMEOUT = max(60.0, nbytes / 5e6)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="sluis-bench-", dir=args.workdir))
    log(f"work dir {work}")
    procs: list[subprocess.Popen] = []
    try:
        keys = {}
        for who in ("up", "down"):
            keys[who] = work / f"{who}_ed25519"
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys[who])])
        cwd = work / "client"
        cwd.mkdir()
        src = cwd / "source.bin"
        log(f"writing {args.size_mib} MiB of random data")
        src_sha = make_source(src, nbytes)
        up, down = start_sluis(work, keys, collected_grace="0s")   # see `discard`
        procs.append(up.proc)
        ossh = start_openssh(work, keys)
        procs.append(ossh.proc)
        log(f"sluis pid {up.pid} on port {up.port}; sshd pid {ossh.pid} on port {ossh.port}")

        clients: list[Client] = [Psftp(work) if c == "psftp" else OpenSSH(CLIENTS[c], args.kex) for c in chosen]
        default_client = OpenSSH(CLIENTS["chacha"], args.kex)
        negotiated = {}
        for c in clients or [default_client]:
            seen = {srv.name: c.probe(srv, cwd) for srv in (up, ossh)}
            c.probe(down, cwd)
            negotiated[c.name] = seen["sluis"] if seen["sluis"] == seen["openssh"] else str(seen)
            log(f"{c.name}: negotiated {negotiated[c.name]}")
        time.sleep(0.5)
        idle = {"sluis": idle_rss_mib(up.pid), "openssh": idle_rss_mib(ossh.pid)}

        rounds: list[dict] = []
        extras: dict = {}
        # Before any transfer: a heap that large transfers grew (and freed) would hide the
        # sessions' memory.
        if "sessions" in parts:
            extras["sessions"] = {srv.name: idle_sessions(srv, args.sessions) for srv in (down, ossh)}
            log("idle sessions: KiB each " + ", ".join(
                f"{k} {v['kib_per_session']:.0f}" for k, v in extras["sessions"].items()))
        if "logins" in parts:
            extras["logins"] = {srv.name: login_cpu(default_client, srv, cwd, args.logins) for srv in (down, ossh)}
            log("logins: server CPU ms per login " + ", ".join(
                f"{k} {v['server_cpu_ms_per_login']:.1f}" for k, v in extras["logins"].items()))

        if "transfers" in parts:
            warm_up(default_client, ((up, down), (ossh, ossh)), src, cwd)
        for i in range(1, args.rounds + 1):
            rnd: dict = {"round": i}
            if "transfers" in parts:
                # Each server goes first in every other round: whatever the first transfer of a
                # round meets (a cold page cache, another tenant's load) is not always sluis's.
                order = ((up, down), (ossh, ossh)) if i % 2 else ((ossh, ossh), (up, down))
                for ci, c in enumerate(clients):
                    rnd[c.name] = {}
                    for srv_up, srv_down in order:
                        name = f"r{i}-{ci}.bin"
                        got = cwd / f"got-{srv_up.name}-{name}"
                        res_up = timed(srv_up, lambda: c.upload(srv_up, src, name, cwd), nbytes)
                        if res_up["timed_out"] and srv_up.name == "openssh":
                            # The killed upload left part of the file: put the whole file in place
                            # (untimed), so the download that follows moves all of it.
                            shutil.copyfile(src, srv_up.remote(name))
                        res_down = timed(srv_down, lambda: c.download(srv_down, name, got, cwd), nbytes)
                        if res_down["timed_out"] or (res_up["timed_out"] and srv_up.name != "openssh"):
                            got.unlink(missing_ok=True)   # a killed transfer: nothing to check
                        elif i == 1:
                            check_download(srv_up, got, name, src_sha)
                        got.unlink(missing_ok=True)
                        discard(srv_up, name)
                        rnd[c.name][srv_up.name] = {"upload": res_up, "download": res_down}
                        log(f"round {i} {c.name:28s} {srv_up.name:7s}: up {res_up['mb_per_s']:6.1f} MB/s "
                            f"cpu {res_up['server_cpu_s_per_gib']:5.2f} s/GiB peak {res_up['peak_hwm_mib']:5.1f} MiB | "
                            f"down {res_down['mb_per_s']:6.1f} MB/s cpu {res_down['server_cpu_s_per_gib']:5.2f} s/GiB "
                            f"peak {res_down['peak_hwm_mib']:5.1f} MiB")
            rounds.append(rnd)

        # After the transfers, whose janitor passes (`discard`) would remove this file too.
        if "concurrent" in parts:
            conc_name = "concurrent.bin"
            conc_src = cwd / "concurrent-source.bin"
            make_source(conc_src, args.concurrent_mib * MIB)
            for srv in (up, ossh):
                default_client.upload(srv, conc_src, conc_name, cwd)
            # Collect it once: a collected file stays readable until a janitor pass removes it.
            default_client.download(down, conc_name, cwd / "conc-collect.out", cwd)
            (cwd / "conc-collect.out").unlink()
            conc_src.unlink()
            extras["concurrent"] = {"streams": args.streams, "mib_each": args.concurrent_mib,
                                    "client": default_client.name, "sluis": [], "openssh": []}
            for _ in range(args.rounds):
                for srv in (down, ossh):
                    extras["concurrent"][srv.name].append(
                        concurrent_downloads(default_client, srv, conc_name, args.concurrent_mib * MIB, cwd,
                                             args.streams))

        profile = None
        if args.profile:
            from pyspy import profile_sluis
            spy = shutil.which(args.py_spy)
            if not spy:
                log(f"--profile: no py-spy ({args.py_spy}); pip install py-spy, or --py-spy PATH")
            else:
                profile = profile_sluis(up, down, clients[0] if clients else default_client, src, cwd,
                                        Path(args.profile), spy)

        meta = {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "size_mib": args.size_mib, "rounds": args.rounds, "negotiated": negotiated,
            "idle_rss_mib": idle, "cpus": os.cpu_count(), "cpu_model": _cpu_model(),
            "loadavg_before_after": [list(load_before), list(os.getloadavg())],
            "kernel": platform.release(), "python": platform.python_version(),
            "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
            "putty": _putty_version(), "sluis_version": _version("sluis"),
            "asyncssh_version": _version("asyncssh"), "uvloop": _version("uvloop"),
            "sluis_exe": sluis_exe(), "client_timeout_s": clients_module.TIMEOUT,
            "order": "each round: for each client, sluis upload + download, then OpenSSH upload + download; "
                     "then the concurrent downloads, sluis then OpenSSH",
            "timing": "wall clock of the whole client run (connect, auth, transfer, exit)",
            "memory": "peak_hwm_mib: largest sampled (50 ms) sum of the server tree's VmHWM (root reset "
                      "before each transfer); per idle session: PSS of the tree with the sessions open "
                      "minus before, divided by their number",
            "cpu": "utime+stime (+ reaped children) of sluis serve / the sshd listener over the transfer",
        }
        result = {"meta": meta, "summary": summarise(rounds, clients) if "transfers" in parts else {},
                  "extras": extras, "rounds": rounds}
        if profile is not None:
            result["profile"] = profile
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {out}")
        print(markdown(result))
        return 0
    finally:
        for p in procs:
            stop_group(p)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        lock.close()


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _putty_version() -> str:
    try:
        out = subprocess.run(["psftp", "-V"], capture_output=True, text=True).stdout
        return "PuTTY " + out.split("Release ")[1].split()[0]
    except (OSError, IndexError):
        return "PuTTY ?"


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "-"


if __name__ == "__main__":
    sys.exit(main())

"""Server CPU per GiB of uploads, split by thread: the event loop (SSH transport and SFTP) apart
from the at-rest workers (scrypt, hashing, age encryption), for two sluis builds side by side;
and the event loop's CPU for the download that collects each upload.

The event-loop thread's CPU is the figure the transport fast path moves; on a machine shared with
other work it is far steadier than wall time, and it leaves out the at-rest work, which runs on
other threads. Both servers run at once; each round uploads once to each, alternating.

    .venv/bin/python bench/threads.py --sluis-exe A --sluis-exe B [--cipher ...] [--size-mib 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs  # noqa: E402
from clients import Client, OpenSSH, Psftp  # noqa: E402
from run import make_source  # noqa: E402
from servers import discard, start_sluis  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """utime + stime of every thread of `pid`, in seconds, by thread id."""
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def split(pid: int, before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """(event-loop thread, every other thread) CPU seconds between two samples; threads that
    ended in between are lost, so the at-rest figure is a lower bound (the loop's is exact)."""
    loop = after.get(pid, 0.0) - before.get(pid, 0.0)
    rest = sum(v - before.get(t, 0.0) for t, v in after.items() if t != pid)
    return loop, rest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sluis-exe", action="append", required=True, help="a sluis command (give two)")
    ap.add_argument("--cipher", default="chacha20-poly1305@openssh.com",
                    help="the cipher forced on OpenSSH sftp, or 'psftp' for PuTTY psftp with its own choice")
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    nbytes = args.size_mib * 1024 * 1024
    gib = nbytes / 2**30
    with tempfile.TemporaryDirectory(prefix="sluis-threads-") as tmp:
        work = Path(tmp)
        client: Client = Psftp(work) if args.cipher == "psftp" else OpenSSH(args.cipher, "curve25519-sha256")
        keys = {}
        for who in ("up", "down"):
            keys[who] = work / f"{who}_ed25519"
            procs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys[who])])
        servers = []
        for i, exe in enumerate(args.sluis_exe):
            procs.SLUIS_EXE = exe
            (work / str(i)).mkdir()
            servers.append(start_sluis(work / str(i), keys, collected_grace="0s"))
        src = work / "src.bin"
        make_source(src, nbytes)
        results: list[list[tuple[float, float, float]]] = [[] for _ in servers]
        try:
            for r in range(args.rounds):
                for i, (srv, down) in enumerate(servers):
                    t0 = thread_cpu(srv.pid)
                    client.upload(srv, src, f"r{r}.bin", work)
                    t1 = thread_cpu(srv.pid)
                    client.download(down, f"r{r}.bin", work / "got.age", work)   # collected: the next may come
                    discard(srv, f"r{r}.bin")   # its page cache freed, as in run.py (servers.discard)
                    loop, rest = split(srv.pid, t0, t1)
                    down_loop, _ = split(srv.pid, t1, thread_cpu(srv.pid))
                    results[i].append((loop / gib, rest / gib, down_loop / gib))
                    procs.log(f"round {r + 1} {args.sluis_exe[i]}: upload loop {loop / gib:.2f} s/GiB, "
                              f"other threads {rest / gib:.2f}; download loop {down_loop / gib:.2f}")
        finally:
            for srv, _ in servers:
                procs.stop_group(srv.proc)
    print(f"{args.size_mib} MiB, {args.cipher}, {args.rounds} rounds: server CPU s/GiB, median (min-max)")

    def stat(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"
    for exe, rows in zip(args.sluis_exe, results):
        print(f"{exe}: upload: event loop {stat([x[0] for x in rows])}, other threads {stat([x[1] for x in rows])}; "
              f"download (the .age, slightly larger): event loop {stat([x[2] for x in rows])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

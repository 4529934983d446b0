"""The measurements beside the transfers: memory per idle SFTP session, server CPU per login, and
8 concurrent downloads (aggregate throughput and server CPU per GiB)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from clients import CLIENT_ENV, OpenSSH
from procs import GIB, MIB, cpu_seconds, log, pss_kib, tree, wait_no_descendants
from servers import IDLE_SESSIONS, Server


def idle_sessions(srv: Server, count: int = IDLE_SESSIONS) -> dict:
    """Open COUNT SSH connections with one SFTP session each (paramiko), hold them, and measure
    the server tree's PSS before and with them open: KiB per idle session."""
    import paramiko

    wait_no_descendants(srv.pid)
    before = pss_kib(tree(srv.pid))
    key = paramiko.Ed25519Key.from_private_key_file(str(srv.key))
    held: list[tuple[paramiko.Transport, paramiko.SFTPClient]] = []
    try:
        for _ in range(count):
            t = paramiko.Transport(("127.0.0.1", srv.port))
            t.connect(username=srv.user, pkey=key)
            held.append((t, paramiko.SFTPClient.from_transport(t)))
        for _, sftp in held:          # every session answered a request, so it is fully set up
            sftp.normalize(".")
        time.sleep(1.0)
        during = pss_kib(tree(srv.pid))
    finally:
        for t, sftp in held:
            try:
                sftp.close()
                t.close()
            except Exception:
                pass
    return {"sessions": count, "pss_before_kib": before, "pss_with_sessions_kib": during,
            "kib_per_session": (during - before) / count}


def login_cpu(client: OpenSSH, srv: Server, cwd: Path, logins: int) -> dict:
    """Server CPU per login over LOGINS connect-authenticate-`pwd`-exit runs (one delta over all
    of them: /proc counts CPU in 10 ms ticks, too coarse for one login)."""
    walls: list[float] = []
    wait_no_descendants(srv.pid)
    c0 = cpu_seconds(srv.pid)
    for _ in range(logins):
        wall, _ = client.login(srv, cwd)
        walls.append(wall)
        wait_no_descendants(srv.pid)
    time.sleep(0.05)
    return {"logins": logins, "server_cpu_ms_per_login": (cpu_seconds(srv.pid) - c0) * 1000 / logins,
            "wall_s": walls}


def concurrent_downloads(client: OpenSSH, srv: Server, name: str, nbytes: int, cwd: Path,
                         streams: int) -> dict:
    """STREAMS downloads of the same stored file at once; aggregate MB/s and server CPU/GiB."""
    wait_no_descendants(srv.pid)
    c0 = cpu_seconds(srv.pid)
    procs = []
    batches = []
    t0 = time.perf_counter()
    for k in range(streams):
        batch = cwd / f"conc-{k}.txt"
        batch.write_text(f"get {srv.stored(name)} {cwd / f'conc-{srv.name}-{k}.out'}\n")
        batches.append(batch)
        procs.append(subprocess.Popen(client.command(srv, batch), cwd=cwd, env=CLIENT_ENV,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE))
    errors = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            errors.append(err.decode(errors="replace")[-500:])
    wall = time.perf_counter() - t0
    wait_no_descendants(srv.pid)
    time.sleep(0.05)
    cpu = cpu_seconds(srv.pid) - c0
    for k in range(streams):
        out = cwd / f"conc-{srv.name}-{k}.out"
        size = out.stat().st_size if out.exists() else 0
        if size < nbytes:
            errors.append(f"stream {k}: got {size} of {nbytes} bytes")
        out.unlink(missing_ok=True)
        batches[k].unlink()
    if errors:
        raise RuntimeError(f"concurrent downloads from {srv.name} failed: {errors}")
    total = streams * nbytes
    log(f"8 concurrent downloads from {srv.name}: {total / 1e6 / wall:.0f} MB/s aggregate")
    return {"streams": streams, "bytes": total, "seconds": wall, "mb_per_s": total / 1e6 / wall,
            "server_cpu_s": cpu, "server_cpu_s_per_gib": cpu / (total / GIB),
            "mib_each": nbytes / MIB}

"""S3 against local disk: upload and download MB/s through `sluis serve` with OpenSSH sftp
(chacha20-poly1305), the files on local disk or in a bucket on moto's standalone S3 server, and
the server's peak memory per upload (RSS high-water mark above the idle server, with N uploads
at once, divided by N). A measurement, not a test; everything on 127.0.0.1.

    .venv/bin/python bench/s3.py --size-mib 128 --rounds 3 --parallel 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.moto import CREDENTIALS, Bucket, MotoServer  # noqa: E402
from tests.support.server import SSH_OPTIONS, SluisServer  # noqa: E402

MIB = 1 << 20
CIPHER = ["-o", "Ciphers=chacha20-poly1305@openssh.com"]


def sftp(server: SluisServer, user: str, script: str) -> float:
    """Seconds one `sftp -b` run takes (connection included)."""
    started = time.perf_counter()
    subprocess.run(["sftp", "-b", "-", "-i", str(server.accounts[user].key), "-P", str(server.port),
                    *SSH_OPTIONS, *CIPHER, f"{user}@127.0.0.1"], input=script, text=True, check=True,
                   capture_output=True, timeout=600)
    return time.perf_counter() - started


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def setup(storage: dict, work: Path, tenants: int) -> SluisServer:
    server = SluisServer(work, {"storage": storage, "policy": {"yearly_limit": 366},
                                "server": {"listen": "127.0.0.1:0"}})
    for index in range(tenants):
        server.add_tenant(f"bench{index}")
        server.add_user(f"down{index}", "recipient", f"bench{index}")
    server.add_user("up", "sender")
    return server.start()


def cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_per_upload(server: SluisServer, source: Path, parallel: int) -> float:
    """MiB of RSS high-water mark above the idle server, with `parallel` uploads at once, per upload."""
    pid = server.process.pid
    idle = kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")     # reset the high-water mark to the current RSS
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda i: sftp(server, "up", f"put {source} bench{i}/para\n"), range(parallel)))
    return (kib(pid, "VmHWM") - idle) / 1024 / parallel


def measure(servers: dict[str, SluisServer], moto: MotoServer, args: argparse.Namespace, source: Path,
            work: Path) -> dict:
    """Interleaved rounds (each round: every server's upload, then every server's download), with
    the CPU seconds per GiB of sluis and of moto's server during each transfer."""
    results: dict[str, dict] = {name: {"upload": [], "download": [], "cpu": {}} for name in servers}
    mb = args.size_mib * MIB / 1e6
    gib = args.size_mib / 1024
    pids = {"sluis": 0, "moto": moto.process.pid}

    def transfer(name: str, kind: str, user: str, script: str) -> None:
        pids["sluis"] = servers[name].process.pid
        before = {who: cpu(pid) for who, pid in pids.items()}
        results[name][kind].append(mb / sftp(servers[name], user, script))
        for who, pid in pids.items():
            results[name]["cpu"].setdefault((kind, who), []).append((cpu(pid) - before[who]) / gib)

    for _ in range(args.rounds):
        for name, server in servers.items():
            transfer(name, "upload", "up", f"put {source} bench0/file\n")
            server.passphrase("file.age", timeout=60)
        for name in servers:
            transfer(name, "download", "down0", f"get file.age {work / 'got.age'}\n")
    for name, server in servers.items():
        results[name]["per_upload_mib"] = peak_per_upload(server, source, args.parallel)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4, help="uploads at once for the memory figure")
    parser.add_argument("--part-size", default="8MiB")
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    moto = MotoServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="sluis-s3-bench-") as tmp:
            work = Path(tmp)
            source = work / "random.bin"
            with open(source, "wb") as out:
                for _ in range(args.size_mib):
                    out.write(os.urandom(MIB))
            servers = {"local": setup({}, work / "local", args.parallel),
                       "s3": setup(Bucket(moto).storage_settings(part_size=args.part_size), work / "s3",
                                   args.parallel)}
            try:
                results = measure(servers, moto, args, source, work)
            finally:
                for server in servers.values():
                    server.close()
    finally:
        moto.stop()
    print(f"{args.size_mib} MiB file, {args.rounds} interleaved rounds (median, min-max), OpenSSH sftp chacha20-poly1305, "
          f"part_size {args.part_size}, peak memory with {args.parallel} uploads at once")
    print("| storage | upload MB/s | download MB/s | CPU s/GiB up: sluis, moto | down: sluis, moto "
          "| peak memory per upload |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        cells = [f"{statistics.median(r[k]):.0f} ({min(r[k]):.0f}-{max(r[k]):.0f})" for k in ("upload", "download")]
        cpus = [", ".join(f"{statistics.median(r['cpu'][(kind, who)]):.2f}" for who in ("sluis", "moto"))
                for kind in ("upload", "download")]
        print(f"| {name} | {cells[0]} | {cells[1]} | {cpus[0]} | {cpus[1]} | {r['per_upload_mib']:.1f} MiB |")


if __name__ == "__main__":
    main()

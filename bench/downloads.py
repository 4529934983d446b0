#!/usr/bin/env python3
"""Downloads only: sluis against OpenSSH's sftp-server, per client, in one run.

A small companion of bench/run.py (whose servers, samplers and helpers it reuses) for the
transport work of issue 12: it times downloads only, for the OpenSSH `sftp` client with
chacha20-poly1305@openssh.com and with aes128-gcm@openssh.com, and for PuTTY's `psftp` (its
own cipher choice). Each round, for each client: an untimed upload to sluis (a download
collects the delivery, so every download needs a fresh one), then the sluis download and the
OpenSSH download, timed, interleaved. Prints medians, min-max and the sluis/OpenSSH ratios.
Run it under the bench lock: `flock /tmp/sluis-bench.lock .venv/bin/python bench/downloads.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as b  # noqa: E402  (bench/run.py)

CLIENTS = {"chacha": "chacha20-poly1305@openssh.com", "gcm": "aes128-gcm@openssh.com", "psftp": None}


def ppk(key: Path) -> Path:
    out = key.with_suffix(".ppk")
    b.run(["puttygen", str(key), "-O", "private", "-o", str(out)])
    return out


def host_fingerprint(port: int) -> str:
    scan = subprocess.run(["ssh-keyscan", "-p", str(port), "-t", "ed25519", "127.0.0.1"],
                          capture_output=True, text=True, timeout=20).stdout
    fp = subprocess.run(["ssh-keygen", "-lf", "-"], input=scan, capture_output=True, text=True).stdout
    return fp.split()[1]


def psftp_batch(srv: b.Server, key: Path, fp: str, commands: list[str], cwd: Path,
                verbose: bool = False) -> tuple[float, float, str]:
    batch = cwd / "pbatch.txt"
    batch.write_text("\n".join(commands) + "\n")
    cmd = ["psftp", "-batch", "-P", str(srv.port), "-i", str(key), "-hostkey", fp, "-b", str(batch)]
    if verbose:
        cmd.append("-v")
    cmd.append(f"{srv.user}@127.0.0.1")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise RuntimeError(f"psftp to {srv.name} failed: {res.stdout[-1500:]}{res.stderr[-1500:]}")
    return wall, (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), res.stderr


def timed(srv: b.Server, go, nbytes: int) -> dict:
    b.wait_no_descendants(srv.pid)
    cpu0 = b.cpu_seconds(srv.pid)
    with b.TreeSampler(srv.pid) as sampler:
        wall, client_cpu, _ = go()
    b.wait_no_descendants(srv.pid)
    time.sleep(0.05)
    cpu = b.cpu_seconds(srv.pid) - cpu0
    return {"mib_per_s": nbytes / b.MIB / wall, "server_cpu_s_per_gib": cpu / (nbytes / b.GIB),
            "peak_hwm_mib": sampler.peak_hwm_kib / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", default="chacha,gcm,psftp")
    ap.add_argument("--out", default=None, help="JSON results file")
    ap.add_argument("--label", default="", help="a label stored in the JSON")
    args = ap.parse_args()
    clients = [c for c in args.clients.split(",") if c]
    b.KEX = "curve25519-sha256"
    nbytes = args.size_mib * b.MIB
    work = Path(tempfile.mkdtemp(prefix="sluis-dl-"))
    procs = []
    try:
        keys = {}
        for who in ("up", "down"):
            keys[who] = work / f"{who}_ed25519"
            b.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys[who])])
        client = work / "client"
        client.mkdir()
        src = client / "source.bin"
        src_sha = b.make_source(src, nbytes)
        up, down = b.start_sluis(work, keys)
        procs.append(up.proc)
        ossh = b.start_openssh(work, keys)
        procs.append(ossh.proc)
        files = Path(ossh.extra["files"])
        shutil.copy(src, files / "src.bin")
        pk = {"down": ppk(keys["down"]), "up": ppk(keys["up"])}
        fps = {"sluis": host_fingerprint(up.port), "openssh": host_fingerprint(ossh.port)}
        negotiated = {}
        for c in clients:
            if CLIENTS[c]:
                for srv in (down, ossh):
                    b.probe(srv, CLIENTS[c], client)
                negotiated[c] = {"sluis": down.cipher + "/" + down.mac, "openssh": ossh.cipher + "/" + ossh.mac}
            else:
                got = {}
                for name, srv, key in (("sluis", down, pk["down"]), ("openssh", ossh, pk["up"])):
                    err = psftp_batch(srv, key, fps[name], ["pwd"], client, verbose=True)[2]
                    got[name] = "; ".join(sorted(set(re.findall(r"Initialised (.*?) (?:outbound|client->server|server->client|inbound)", err)))) or "?"
                negotiated[c] = got
        b.log(f"negotiated: {negotiated}")
        rounds = []
        n = 0
        for i in range(1, args.rounds + 1):
            rnd = {}
            for c in clients:
                n += 1
                name = f"r{n}.bin"
                b.sftp_batch(up, CLIENTS["gcm"], [f"put {src} {b.TENANT}/{name}"], client)
                got = client / "got.bin"
                if CLIENTS[c]:
                    s = timed(down, lambda: b.sftp_batch(down, CLIENTS[c], [f"get {name}.age {got}"], client), nbytes)
                    got.unlink()
                    o = timed(ossh, lambda: b.sftp_batch(ossh, CLIENTS[c], [f"get {files / 'src.bin'} {got}"], client), nbytes)
                else:
                    s = timed(down, lambda: psftp_batch(down, pk["down"], fps["sluis"], [f"get {name}.age {got}"], client), nbytes)
                    if i == 1:
                        check = b.verify_sluis(got, up.logfile, f"{name}.age", src_sha)
                        if not check["ok"]:
                            raise RuntimeError("psftp download from sluis does not decrypt to the source")
                    got.unlink()
                    o = timed(ossh, lambda: psftp_batch(ossh, pk["up"], fps["openssh"], [f"get {files / 'src.bin'} {got}"], client), nbytes)
                got.unlink()
                rnd[c] = {"sluis": s, "openssh": o}
                b.log(f"round {i} {c:6s}: sluis {s['mib_per_s']:6.1f} MiB/s {s['server_cpu_s_per_gib']:5.2f} s/GiB | "
                      f"openssh {o['mib_per_s']:6.1f} MiB/s {o['server_cpu_s_per_gib']:5.2f} s/GiB")
            rounds.append(rnd)
        summary = {}
        print(f"downloads, {args.size_mib} MiB, {args.rounds} rounds, medians (min-max); load {os.getloadavg()[0]:.2f}"
              + (f"; {args.label}" if args.label else ""))
        print("| client | sluis MiB/s | OpenSSH MiB/s | ratio (per round) | sluis CPU s/GiB | OpenSSH CPU s/GiB | CPU ratio |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for c in clients:
            def col(srv: str, k: str) -> list[float]:
                return [r[c][srv][k] for r in rounds]
            ratio = [r[c]["sluis"]["mib_per_s"] / r[c]["openssh"]["mib_per_s"] for r in rounds]
            cpu_ratio = [r[c]["sluis"]["server_cpu_s_per_gib"] / r[c]["openssh"]["server_cpu_s_per_gib"] for r in rounds]
            summary[c] = {"ratio_median": b.med(ratio), "ratio_min": min(ratio), "ratio_max": max(ratio),
                          "cpu_ratio_median": b.med(cpu_ratio),
                          "sluis_mib_s": b.med(col("sluis", "mib_per_s")), "openssh_mib_s": b.med(col("openssh", "mib_per_s")),
                          "sluis_cpu": b.med(col("sluis", "server_cpu_s_per_gib")),
                          "openssh_cpu": b.med(col("openssh", "server_cpu_s_per_gib"))}
            s = summary[c]
            print(f"| {c} | {s['sluis_mib_s']:.1f} | {s['openssh_mib_s']:.1f} | {s['ratio_median']:.2f} "
                  f"({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) | {s['sluis_cpu']:.2f} | {s['openssh_cpu']:.2f} "
                  f"| {s['cpu_ratio_median']:.2f} |")
        if args.out:
            Path(args.out).write_text(json.dumps({"label": args.label, "negotiated": negotiated,
                                                  "summary": summary, "rounds": rounds}, indent=1))
        return 0
    finally:
        for p in procs:
            b.stop_group(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

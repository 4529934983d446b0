"""The clients bench/run.py drives: OpenSSH's sftp with a forced cipher, and PuTTY's psftp (the
engine inside WinSCP and FileZilla), which gets the key converted by puttygen. Every run is one
batch; its wall time and the client's CPU (RUSAGE_CHILDREN) are returned."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

from procs import run
from servers import Server

CLIENT_ENV = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID")}


class Client:
    """One client configuration; `name` labels its rows in the table."""

    name = ""

    def batch(self, srv: Server, commands: list[str], cwd: Path, verbose: bool = False) -> tuple[float, float, str]:
        raise NotImplementedError

    def probe(self, srv: Server, cwd: Path) -> str:
        """Connect once verbosely; return the negotiated cipher as the client reports it."""
        raise NotImplementedError

    def upload(self, srv: Server, src: Path, name: str, cwd: Path) -> tuple[float, float]:
        return self.batch(srv, [f"put {src} {srv.remote(name)}"], cwd)[:2]

    def download(self, srv: Server, name: str, dst: Path, cwd: Path) -> tuple[float, float]:
        return self.batch(srv, [f"get {srv.stored(name)} {dst}"], cwd)[:2]

    def login(self, srv: Server, cwd: Path) -> tuple[float, float]:
        return self.batch(srv, ["pwd"], cwd)[:2]


TIMEOUT = 60.0   # seconds for one client run (run.py sets it per file size); see TransferTimeout


class TransferTimeout(RuntimeError):
    """A client run took longer than TIMEOUT and was killed. Seen with psftp uploading to
    OpenSSH's sftp-server, in 2 or 3 of 5 rounds on the 2-core VM: sftp-server's input buffer
    grew to 170 MB and it crawled at 0.4-1.5 MB/s. The round records the time as a lower bound
    and goes on."""

    def __init__(self, wall: float, cpu: float, what: str) -> None:
        super().__init__(f"{what} killed after {wall:.0f} s")
        self.wall, self.cpu = wall, cpu


def _timed(cmd: list[str], cwd: Path, what: str) -> tuple[float, float, str]:
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=CLIENT_ENV,
                             stdin=subprocess.DEVNULL, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        raise TransferTimeout(time.perf_counter() - t0, (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
                              what) from None
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed ({res.returncode}):\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return wall, cpu, res.stdout + res.stderr


class OpenSSH(Client):
    """OpenSSH sftp -b with its defaults (64 requests in flight, each as large as the
    server's limits@openssh.com allows: 255 KiB from both servers here) and a forced cipher."""

    def __init__(self, cipher: str, kex: str) -> None:
        self.cipher = cipher
        self.kex = kex
        short = cipher.split("@")[0]
        self.name = f"OpenSSH sftp, {short}"

    def ssh_opts(self, srv: Server) -> list[str]:
        opts = ["-F", "/dev/null", "-P", str(srv.port), "-i", str(srv.key),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "Compression=no", "-o", "LogLevel=ERROR", "-o", f"Ciphers={self.cipher}"]
        if self.kex:
            opts += ["-o", f"KexAlgorithms={self.kex}"]
        return opts

    def command(self, srv: Server, batch: Path, verbose: bool = False) -> list[str]:
        return ["sftp", *(["-v"] if verbose else []), *self.ssh_opts(srv), "-b", str(batch),
                f"{srv.user}@127.0.0.1"]

    def batch(self, srv: Server, commands: list[str], cwd: Path, verbose: bool = False) -> tuple[float, float, str]:
        batch = cwd / f"batch-{os.getpid()}-{time.monotonic_ns()}.txt"
        batch.write_text("\n".join(commands) + "\n")
        try:
            return _timed(self.command(srv, batch, verbose), cwd, f"sftp to {srv.name}: {commands}")
        finally:
            batch.unlink()

    def probe(self, srv: Server, cwd: Path) -> str:
        out = self.batch(srv, ["pwd"], cwd, verbose=True)[2]
        m = re.search(r"kex: client->server cipher: (\S+) MAC: (\S+)", out)
        k = re.search(r"kex: algorithm: (\S+)", out)
        return f"{m.group(1)} ({m.group(2)}), kex {k.group(1) if k else '?'}" if m else "?"


class Psftp(Client):
    """PuTTY psftp -batch with its defaults; the ed25519 key is converted with puttygen."""

    name = "PuTTY psftp"

    def __init__(self, work: Path) -> None:
        self.work = work
        self._ppk: dict[Path, Path] = {}

    @staticmethod
    def available() -> bool:
        return bool(shutil.which("psftp") and shutil.which("puttygen"))

    def ppk(self, key: Path) -> Path:
        if key not in self._ppk:
            out = self.work / f"{key.name}.ppk"
            run(["puttygen", str(key), "-O", "private", "-o", str(out)])
            self._ppk[key] = out
        return self._ppk[key]

    def command(self, srv: Server, batch: Path, verbose: bool = False) -> list[str]:
        return ["psftp", *(["-v"] if verbose else []), "-batch", "-b", str(batch), "-P", str(srv.port),
                "-noagent", "-i", str(self.ppk(srv.key)), "-hostkey", srv.hostkey_sha256,
                f"{srv.user}@127.0.0.1"]

    def batch(self, srv: Server, commands: list[str], cwd: Path, verbose: bool = False) -> tuple[float, float, str]:
        batch = cwd / f"psftp-{os.getpid()}-{time.monotonic_ns()}.txt"
        batch.write_text("\n".join(commands) + "\n")
        try:
            return _timed(self.command(srv, batch, verbose), cwd, f"psftp to {srv.name}: {commands}")
        finally:
            batch.unlink()

    def probe(self, srv: Server, cwd: Path) -> str:
        out = self.batch(srv, ["pwd"], cwd, verbose=True)[2]
        found = re.findall(r"Initialised (.+?) (?:outbound|client->server) encryption", out)
        return found[0] if found else "?"

"""A real HAProxy for tests: deploy/haproxy.cfg with the addresses, ports and check interval of
the test (nothing else changed), run in the foreground in a temp dir on loopback, with its
runtime API on a socket in that dir."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.loopback import free_port, stop_process
from tests.support.waiting import wait_until

DEPLOYED = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"


def available() -> bool:
    return shutil.which("haproxy") is not None


class HAProxy:
    def __init__(self, root: Path, nodes: dict[str, int], *, inter: str = "100ms",
                 options: dict[str, str] | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.nodes, self.port = root, nodes, free_port()
        self.options = options or {}   # server options replaced: {"send-proxy-v2": "send-proxy"}
        self.admin = root / "admin.sock"
        self.config = root / "haproxy.cfg"
        self.config.write_text(self.render(DEPLOYED.read_text(), inter))
        self.log_path = root / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def render(self, text: str, inter: str) -> str:
        """The deployed file for loopback: no user switch or daemon, no syslog, our sockets."""
        out: list[str] = []
        for line in text.splitlines():
            word = line.split()[0] if line.split() else ""
            if word in ("user", "group", "daemon", "chroot") or (word == "log" and line.split()[1] != "global"):
                continue
            if word == "stats" and line.split()[1] == "socket":
                line = f"    stats socket {self.admin} mode 600 level admin"
            elif word == "bind":
                line = f"    bind 127.0.0.1:{self.port}"
            elif word == "server":
                if out[-1].split()[0] == "server":
                    continue
                line = "\n".join(f"    server {name} 127.0.0.1:{port}" for name, port in self.nodes.items())
            line = re.sub(r"\binter \S+", f"inter {inter}", line)
            for option, replacement in self.options.items():
                line = re.sub(rf" {re.escape(option)}\b", f" {replacement}".rstrip(), line)
            out.append(line)
        return "\n".join(out) + "\n"

    def start(self) -> HAProxy:
        subprocess.run(["haproxy", "-c", "-q", "-f", str(self.config)], check=True, capture_output=True, timeout=30)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(["haproxy", "-db", "-f", str(self.config)], stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.root)
        wait_until(lambda: self.admin.exists() and self.command("show info"), "HAProxy's runtime API", 20,
                   context=lambda: self.log_path.read_text(errors="replace"))
        return self

    def command(self, line: str) -> str:
        """One runtime API command (as `socat stdio /run/haproxy/admin.sock` would send it)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            try:
                sock.connect(str(self.admin))
            except (FileNotFoundError, ConnectionRefusedError):
                return ""
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stat(self, node: str) -> dict[str, str]:
        """The `show stat` row of one node of backend `sluis` (status, scur, check_status, ...)."""
        lines = self.command("show stat").splitlines()
        if not lines:
            return {}
        names = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(names, line.split(",")))
            if row.get("pxname") == "sluis" and row.get("svname") == node:
                return row
        return {}

    def wait_up(self, node: str, timeout: float = 20) -> dict[str, str]:
        return wait_until(lambda: (row := self.stat(node)).get("status") == "UP" and row.get("check_status") == "L7OK"
                          and row, f"HAProxy to see {node} UP (L7OK)", timeout,
                          context=lambda: f"; stat: {self.stat(node)}")

    def restart(self, node: str, server: Any) -> tuple[float, float]:
        """A rolling restart's second half: stop the drained node's `server` (it must exit 0),
        start it, put it back in the pool and wait until HAProxy sees it UP. Returns
        (stopped, back) as time.monotonic() readings."""
        assert server.stop() == 0
        stopped = time.monotonic()
        server.start()
        self.command(f"set server sluis/{node} state ready")
        self.wait_up(node)
        return stopped, time.monotonic()

    def stop(self) -> None:
        stop_process(self.process)

"""A real sluis server for tests: `sluis init` in a temp dir, tenants and users with fresh SSH
keys, then `sluis serve` as a subprocess on 127.0.0.1 (a free port), logging to a file."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import asyncssh

from sluis.config import load_settings
from sluis.server.app import App, build_app
from sluis.server.cli.common import operator
from sluis.server.cli.init import init_setup
from tests.support.waiting import wait_until

LISTENING = re.compile(r"sluis listening on [\d.]+:(\d+)")
SMS_LINE = re.compile(r"\[sms console-\d+\] to (\+\d+): .*? voor (.+?) \(([a-z0-9-]+)\): ([0-9A-Z]{4}(?:-[0-9A-Z]{4}){5})")
DEFAULT_PHONE = "+32470123456"
SECOND_PHONE = "+32471234567"
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]


@dataclass
class Account:
    name: str
    key: Path       # OpenSSH private key
    pub: Path

    def ppk(self) -> Path:
        """The key in PuTTY's format (psftp reads only that), converted with puttygen."""
        path = self.key.with_suffix(".ppk")
        if not path.exists():
            subprocess.run(["puttygen", str(self.key), "-O", "private", "-o", str(path)], check=True,
                           capture_output=True, timeout=30)
        return path


class SluisServer:
    def __init__(self, root: Path, overrides: dict[str, dict[str, Any]] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.keys = root / "keys"
        self.keys.mkdir(parents=True, exist_ok=True)
        # Tests upload arbitrary content; those about the list policy pass policy.content themselves.
        merged: dict[str, dict[str, Any]] = {"server": {"listen": "127.0.0.1:0"}, "policy": {"content": "any"}}
        for section, values in (overrides or {}).items():
            merged.setdefault(section, {}).update(values)
        self.config = init_setup(root / "sluis", merged)
        self.data_dir = root / "sluis"
        self.log_path = root / "serve.log"
        self.env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._app: App | None = None
        self.accounts: dict[str, Account] = {}
        self.popen_extra: dict[str, Any] = {}   # e.g. cwd or preexec_fn for the `sluis serve` process

    # --- setup through the library (what the CLI calls) --------------------------------------------
    def app(self) -> App:
        if self._app is None:
            self._app = build_app(load_settings(self.config, self.env))
        return self._app

    def add_tenant(self, name: str, *, phones: tuple[str, ...] = (DEFAULT_PHONE,), fmt: str = "age",
                   protocol: bool = True, email: str | None = None, nis: str | None = None) -> None:
        app = self.app()
        app.directory.add_tenant(operator(), name, phones=phones, fmt=fmt, email=email, nis=nis)
        if protocol:
            app.protocols.register(operator(), app.directory.tenant(name), signed=date(2021, 5, 1),
                                   effective=date(2021, 6, 2), reference="test")

    def add_user(self, name: str, role: str, tenant: str | None = None) -> Account:
        key = asyncssh.generate_private_key("ssh-ed25519", comment=name)
        path = self.keys / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.export_private_key("openssh"))
        pub = path.with_suffix(".pub")
        pub.write_bytes(key.export_public_key("openssh"))
        self.app().directory.add_user(operator(), name, role=role, tenant=tenant,
                                      keys=[(pub.read_text(), str(pub))])
        account = Account(name, path, pub)
        self.accounts[name] = account
        return account

    def standard(self) -> SluisServer:
        """Two municipalities, a sender, a recipient for each."""
        self.add_tenant("genk")
        self.add_tenant("gent", phones=(SECOND_PHONE,))
        self.add_user("agency", "sender")
        self.add_user("genk-clerk", "recipient", "genk")
        self.add_user("gent-clerk", "recipient", "gent")
        return self

    # --- the process -------------------------------------------------------------------------------
    def sibling(self, name: str = "b") -> SluisServer:
        """Another `sluis serve` on this server's config, data and database (several processes on
        one database): its own process, port and log; accounts and setup are shared. Close it."""
        other = copy.copy(self)
        other.env = {**self.env, "SLUIS_NODE": name}   # a node of its own (server/core/nodes.py)
        other.log_path = self.root / f"serve-{name}.log"
        other.process, other.port, other._app = None, 0, None
        return other

    def start(self, timeout: float = 30) -> SluisServer:
        if self._app is not None:
            self._app.close()
            self._app = None
        log = open(self.log_path, "ab")
        start_at = self.log_path.stat().st_size
        self.process = subprocess.Popen([sys.executable, "-m", "sluis.server.cli.main", "-c", str(self.config),
                                         "serve"], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        **self.popen_extra)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log_path.read_text(errors="replace")[start_at:])
            if match:
                self.port = int(match.group(1))
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"sluis serve exited with {self.process.returncode}:\n{self.log}")
            time.sleep(0.05)
        raise TimeoutError(f"sluis serve did not start:\n{self.log}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _log_tail(self) -> str:
        return f"; the server log ends:\n{self.log[-4000:]}"

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        return wait_until(lambda: re.search(pattern, self.log), f"{pattern!r} in the server log", timeout,
                          context=self._log_tail)

    def passphrase(self, stored_name: str, timeout: float = 20) -> str:
        """The passphrase the console provider 'texted' for a file (last one wins)."""
        found = wait_until(lambda: [m.group(4) for m in SMS_LINE.finditer(self.log) if m.group(2) == stored_name],
                           f"an SMS for {stored_name}", timeout, context=self._log_tail)
        return found[-1]

    # --- clients -------------------------------------------------------------------------------------
    def sftp(self, user: str, script: str, *, check: bool = True, timeout: float = 60,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run OpenSSH sftp in batch mode; `-` before a command lets the batch go on after an error."""
        account = self.accounts[user]
        result = subprocess.run(["sftp", "-b", "-", "-i", str(account.key), "-P", str(self.port), *SSH_OPTIONS,
                                 f"{user}@127.0.0.1"], input=script, text=True, capture_output=True,
                                timeout=timeout, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(f"sftp failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def ssh_args(self, user: str) -> list[str]:
        return ["-i", str(self.accounts[user].key), *SSH_OPTIONS]

    def paramiko(self, user: str) -> Any:
        """A connected paramiko SFTPClient (close it, or use it in `with`)."""
        import paramiko

        transport = paramiko.Transport(("127.0.0.1", self.port))
        transport.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(str(self.accounts[user].key)))
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        return client

    def host_key_fingerprint(self) -> str:
        return asyncssh.read_public_key(str(self.data_dir / "ssh_host_ed25519_key.pub")).get_fingerprint("sha256")

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self._app is not None:
            self._app.close()
            self._app = None

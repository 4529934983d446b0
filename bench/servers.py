"""The two servers bench/run.py compares: `sluis serve` (tenant `bench`, sender `up`, recipient
`down`) and a throw-away `sshd` whose sftp subsystem is OpenSSH's own sftp-server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import free_port, run, sluis_exe, stop_group, wait_port

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
TENANT = "bench"
PHONE = "+32470123456"
IDLE_SESSIONS = 100


@dataclass
class Server:
    name: str
    port: int
    user: str
    key: Path
    proc: subprocess.Popen | None = None
    logfile: Path | None = None
    hostkey_sha256: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def remote(self, name: str) -> str:
        """Where an upload of NAME goes (sluis: the tenant's folder)."""
        return f"{TENANT}/{name}" if self.name == "sluis" else f"{self.extra['files']}/{name}"

    def stored(self, name: str) -> str:
        """What a download of the uploaded NAME fetches (sluis: the recipient's NAME.age)."""
        return f"{name}.age" if self.name == "sluis" else f"{self.extra['files']}/{name}"


def _set(text: str, key: str, value: str) -> str:
    text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    if n != 1:
        raise RuntimeError(f"could not set {key} in sluis.toml")
    return text


def start_sluis(work: Path, keys: dict[str, Path], collected_grace: str = "") -> tuple[Server, Server]:
    """Returns (sender view, recipient view) of one sluis server. `collected_grace` ("0s"): how
    long a collected file stays, for `discard` (default: what `sluis init` writes, 24 h)."""
    exe = sluis_exe()
    d = work / "sluis"
    run([exe, "init", str(d)])
    conf = d / "sluis.toml"
    port = free_port()
    text = conf.read_text()
    text = _set(text, "listen", f'"127.0.0.1:{port}"')
    # Every round collects its delivery; each new upload then counts against the yearly limit.
    text = _set(text, "yearly_limit", "366")
    # The transfers are random bytes, not a list: `sluis init` sets up "kbi-list" for real use.
    text = _set(text, "content", '"any"')
    # 100 idle sessions of one user, and 8 concurrent downloads.
    text = _set(text, "max_sessions_per_user", str(IDLE_SESSIONS + 20))
    if collected_grace:
        text = _set(text, "collected_grace", f'"{collected_grace}"')
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
    hostkey = fingerprint(d / "ssh_host_ed25519_key.pub")
    up = Server("sluis", port, "up", keys["up"], proc, logfile, hostkey)
    down = Server("sluis", port, "down", keys["down"], proc, logfile, hostkey)
    up.extra["config"] = down.extra["config"] = str(conf)
    up.extra["exe"] = down.extra["exe"] = exe
    try:
        wait_port(port, proc, logfile)
        deadline = time.monotonic() + 10
        while "sluis listening on" not in logfile.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    except BaseException:
        stop_group(proc)
        raise
    return up, down


def fingerprint(pub: Path) -> str:
    """SHA256:... of a public key file (what psftp -hostkey takes)."""
    out = run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)]).stdout
    return out.split()[1]


def discard(srv: Server, name: str) -> None:
    """Remove a file the bench uploaded and then collected, as soon as the round is done with it:
    OpenSSH's by unlinking it, sluis's by a janitor pass (`sluis janitor run`), which removes
    every collected file once [retention] collected_grace is over (start_sluis(collected_grace="0s")).

    Both alike, because files left in place keep their page cache: every later upload to that
    server then needs pages nothing freed, and on a VM pages its guest never touched cost about
    14 times more to write into (2.4 against 0.17 ms per MiB here). sluis's collected files,
    kept for the default 24 h, would take some 6 GiB of new pages over a `make bench` (23 files
    of 256 MiB) while OpenSSH's uploads reused the pages of the files unlinked before them."""
    if srv.name == "openssh":
        Path(srv.remote(name)).unlink(missing_ok=True)
    else:
        run([srv.extra["exe"], "-c", srv.extra["config"], "janitor", "run"])


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
MaxStartups {IDLE_SESSIONS + 20}
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
    srv = Server("openssh", port, "root", keys["up"], proc, logfile,
                 fingerprint(d / "host_ed25519_key.pub"))
    srv.extra["files"] = str(d / "files")
    try:
        wait_port(port, proc, logfile)
    except BaseException:
        stop_group(proc)
        raise
    return srv

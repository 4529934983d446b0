"""Real clients over loopback: each uploads as the sender to /genk/, checks the listing and size as
the sender, downloads as genk-clerk; the downloaded .age file must decrypt to the original bytes
and the delivery must be collected.

Client settings that matter (worth telling municipalities):
- OpenSSH scp: the default (SFTP) mode works; `scp -O` (legacy protocol) is refused.
- PuTTY psftp: needs the key as .ppk; pin the host key with -hostkey SHA256:...
- lftp: sftp:// through `set sftp:connect-program "ssh -a -x -i KEY"`.
- rclone 1.60: set `shell_type = none` and `disable_hashcheck = true`; without them it works too,
  but first tries a series of ssh exec commands (echo, md5sum, sha1sum, ...) that sluis refuses.
  It sends write requests with stray bytes after the data, sets times and checks the size after
  upload; pin the host key with `known_hosts_file`.
- curl (libssh2): -T to upload, --hostpubsha256 to pin the host key. Needs libssh2 >= 1.11
  (encrypt-then-MAC or AES-GCM); older builds (Debian 12's 1.10) are refused at key exchange.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.clients import require_binary
from tests.support.clients_extra import (
    TIMEOUT, audit, blob, connect, decrypt_file, deliveries, env_without_agent,
)
from tests.support.server import SSH_OPTIONS, SluisServer
from tests.support.waiting import wait_until


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                            env={**env_without_agent(), **(env or {})}, cwd=cwd)
    assert result.returncode == 0, f"{cmd[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def source_file(tmp_path: Path, name: str, size: int, seed: int) -> tuple[Path, bytes]:
    data = blob(size, seed)
    path = tmp_path / "out" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path, data


def listed(output: str, name: str, size: int) -> bool:
    """Some line of a long listing names the file with its size."""
    return any(name in line and re.search(rf"\b{size}\b", line) for line in output.splitlines())


def check_waiting(server: SluisServer, name: str, data: bytes) -> None:
    """Exactly one delivery, the sender's name and size, waiting; no refusal was needed on the way."""
    [row] = deliveries(server)
    assert (row["name"], row["plain_size"], row["state"]) == (name, len(data), "published")
    assert audit(server, "upload.abort") == []
    assert audit(server, "sftp.deny") == []     # scp and lftp 'truncate' to the size written: a no-op


def check_collected(server: SluisServer, name: str, data: bytes, downloaded: Path) -> None:
    assert decrypt_file(downloaded, server.passphrase(name + ".age")) == data
    # lftp disconnects without waiting for its CLOSE's answer: the server closes the handle when
    # the session ends, a few milliseconds after the client has exited.
    wait_until(lambda: deliveries(server)[0]["state"] != "published", "the download's close",
               context=lambda: f"\n{server.log[-3000:]}")
    [row] = deliveries(server)
    assert downloaded.stat().st_size == row["stored_size"]
    assert (row["state"], row["collected_by"]) == ("collected", "genk-clerk")
    assert row["collected_from"].startswith("127.0.0.1:")


def host_known_hosts(server: SluisServer, path: Path) -> Path:
    key = (server.data_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    path.write_text(f"[127.0.0.1]:{server.port} {' '.join(key)}\n")
    return path


# --- OpenSSH ---------------------------------------------------------------------------------------
def test_openssh_sftp(server, tmp_path):
    require_binary("sftp")
    name = "lijst-sftp.csv"
    src, data = source_file(tmp_path, name, 300_001, 41)
    out = server.sftp("agency", f"cd /genk\nput {src}\nls -l\n").stdout
    assert listed(out, name, len(data)), out
    check_waiting(server, name, data)
    got = tmp_path / "got.age"
    out = server.sftp("genk-clerk", f"ls -l\nget {name}.age {got}\n").stdout
    assert f"{name}.age" in out
    check_collected(server, name, data, got)


def test_openssh_scp_in_sftp_mode(server, tmp_path):
    require_binary("scp", "sftp")
    name = "lijst-scp.csv"
    src, data = source_file(tmp_path, name, 262_143, 42)
    run(["scp", "-P", str(server.port), *server.ssh_args("agency"), str(src), f"agency@127.0.0.1:/genk/{name}"])
    out = server.sftp("agency", "ls -l /genk\n").stdout
    assert listed(out, name, len(data)), out
    check_waiting(server, name, data)
    got = tmp_path / "got.age"
    run(["scp", "-P", str(server.port), *server.ssh_args("genk-clerk"), f"genk-clerk@127.0.0.1:/{name}.age",
         str(got)])
    check_collected(server, name, data, got)


# --- PuTTY ---------------------------------------------------------------------------------------------
def psftp(server: SluisServer, user: str, script: str, tmp_path: Path) -> str:
    batch = tmp_path / f"psftp-{user}.txt"
    batch.write_text(script)
    return run(["psftp", "-batch", "-bc", "-b", str(batch), "-P", str(server.port), "-noagent",
                "-i", str(server.accounts[user].ppk()), "-hostkey", server.host_key_fingerprint(),
                f"{user}@127.0.0.1"]).stdout


def test_putty_psftp(server, tmp_path):
    require_binary("psftp")
    require_binary("puttygen")
    name = "lijst-psftp.csv"
    src, data = source_file(tmp_path, name, 200_000, 43)
    out = psftp(server, "agency", f"put {src} /genk/{name}\nls /genk\n", tmp_path)
    assert listed(out, name, len(data)), out
    check_waiting(server, name, data)
    got = tmp_path / "got.age"
    out = psftp(server, "genk-clerk", f"ls\nget {name}.age {got}\n", tmp_path)
    assert f"{name}.age" in out
    check_collected(server, name, data, got)


def test_putty_psftp_refuses_an_unexpected_host_key(server, tmp_path):
    require_binary("psftp")
    batch = tmp_path / "ls.txt"
    batch.write_text("ls\n")
    wrong = "SHA256:" + base64.b64encode(b"\0" * 32).decode().rstrip("=")
    result = subprocess.run(["psftp", "-batch", "-b", str(batch), "-P", str(server.port), "-noagent",
                             "-i", str(server.accounts["genk-clerk"].ppk()), "-hostkey", wrong,
                             "genk-clerk@127.0.0.1"], capture_output=True, text=True, timeout=TIMEOUT,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert audit(server, "auth.success") == []


# --- lftp ------------------------------------------------------------------------------------------------
def lftp(server: SluisServer, user: str, commands: str) -> str:
    connect_program = " ".join(["ssh", "-a", "-x", "-i", str(server.accounts[user].key), *SSH_OPTIONS])
    script = (f'set sftp:connect-program "{connect_program}"; set cmd:fail-exit yes; set net:max-retries 1; '
              f"set net:timeout 15; open -u {user}, sftp://127.0.0.1:{server.port}; {commands}")
    return run(["lftp", "-c", script], cwd=server.root).stdout


def test_lftp(server, tmp_path):
    require_binary("lftp")
    name = "lijst-lftp.csv"
    src, data = source_file(tmp_path, name, 327_681, 44)
    out = lftp(server, "agency", f"put {src} -o /genk/{name}; cls -l /genk")
    assert listed(out, name, len(data)), out
    check_waiting(server, name, data)
    got = tmp_path / "got.age"
    out = lftp(server, "genk-clerk", f"cls -l /; get /{name}.age -o {got}")
    assert f"{name}.age" in out
    check_collected(server, name, data, got)


# --- rclone ------------------------------------------------------------------------------------------------
def rclone(server: SluisServer, tmp_path: Path, *args: str) -> str:
    config = tmp_path / "rclone.conf"
    if not config.exists():
        known = host_known_hosts(server, tmp_path / "known_hosts")
        sections = []
        for remote, user in (("sender", "agency"), ("clerk", "genk-clerk")):
            sections.append(f"[{remote}]\ntype = sftp\nhost = 127.0.0.1\nport = {server.port}\nuser = {user}\n"
                            f"key_file = {server.accounts[user].key}\nknown_hosts_file = {known}\n"
                            "shell_type = none\ndisable_hashcheck = true\nset_modtime = true\n")
        config.write_text("\n".join(sections))
    env = {"RCLONE_CACHE_DIR": str(tmp_path / "rclone-cache")}
    return run(["rclone", "--config", str(config), "--retries", "1", "--low-level-retries", "1",
                "--contimeout", "15s", *args], cwd=tmp_path, env=env).stdout


def test_rclone(server, tmp_path):
    require_binary("rclone")
    name = "lijst-rclone.csv"
    src, data = source_file(tmp_path, name, 250_000, 45)
    rclone(server, tmp_path, "copyto", str(src), f"sender:/genk/{name}")
    out = rclone(server, tmp_path, "lsl", "sender:/genk")
    assert listed(out, name, len(data)), out
    check_waiting(server, name, data)
    # rclone checked its work: it set the times and stat'ed the file, and both succeeded
    assert re.search(rf'user="agency" .* op=setstat path="/genk/{re.escape(name)}" result="ok"', server.log)
    assert re.search(rf'user="agency" .* op=stat path="/genk/{re.escape(name)}" result="ok"', server.log)
    got = tmp_path / "got.age"
    rclone(server, tmp_path, "copyto", f"clerk:/{name}.age", str(got))
    check_collected(server, name, data, got)


# --- curl ---------------------------------------------------------------------------------------------------
def curl(server: SluisServer, user: str, *args: str) -> str:
    account = server.accounts[user]
    pin = server.host_key_fingerprint().removeprefix("SHA256:")
    return run(["curl", "-sS", "--connect-timeout", "15", "--hostpubsha256", pin, "--key", str(account.key),
                "--pubkey", str(account.pub), "-u", f"{user}:", *args]).stdout


def libssh2_version() -> tuple[int, ...]:
    found = re.search(r"libssh2/(\d+)\.(\d+)", run(["curl", "-V"]).stdout)
    assert found, "curl is built without libssh2"
    return tuple(int(part) for part in found.groups())


def test_curl(server, tmp_path):
    require_binary("curl")
    if libssh2_version() < (1, 11):
        # libssh2 before 1.11 has no encrypt-then-MAC and no AES-GCM/ChaCha20: nothing it can
        # agree on with sluis (server/sftp/algorithms.py), so it is refused at key exchange.
        result = subprocess.run(["curl", "-sS", "--connect-timeout", "15", "--insecure", "--key",
                                 str(server.accounts["agency"].key), "--pubkey", str(server.accounts["agency"].pub),
                                 "-u", "agency:", f"sftp://127.0.0.1:{server.port}/"],
                                capture_output=True, text=True, timeout=TIMEOUT, env=env_without_agent())
        assert result.returncode != 0 and "Unable to exchange encryption keys" in result.stderr, result.stderr
        return
    name = "lijst-curl.csv"
    src, data = source_file(tmp_path, name, 230_001, 46)
    base = f"sftp://127.0.0.1:{server.port}"
    curl(server, "agency", "-T", str(src), f"{base}/genk/{name}")
    out = curl(server, "agency", f"{base}/genk/")
    assert listed(out, name, len(data)), out
    check_waiting(server, name, data)
    got = tmp_path / "got.age"
    curl(server, "genk-clerk", "-o", str(got), f"{base}/{name}.age")
    check_collected(server, name, data, got)


# --- paramiko -------------------------------------------------------------------------------------------------
def test_paramiko_put_and_get(server, tmp_path):
    name = "lijst-paramiko.csv"
    src, data = source_file(tmp_path, name, 310_000, 47)
    with connect(server, "agency") as client:
        attrs = client.put(str(src), f"/genk/{name}", confirm=True)   # confirm: stat and compare size
        assert attrs.st_size == len(data)
        assert [(e.filename, e.st_size) for e in client.listdir_attr("/genk")] == [(name, len(data))]
    check_waiting(server, name, data)
    got = tmp_path / "got.age"
    with connect(server, "genk-clerk") as client:
        client.get(f"/{name}.age", str(got), prefetch=True, max_concurrent_prefetch_requests=16)
    check_collected(server, name, data, got)


@pytest.mark.parametrize("client", ["sftp", "lftp"])
def test_recipient_client_cannot_upload(server, tmp_path, client):
    """The refusal reaches a real client as an error (and its exit status says so)."""
    require_binary(client)
    src, _ = source_file(tmp_path, "poging.csv", 1000, 48)
    if client == "sftp":
        result = server.sftp("genk-clerk", f"put {src} /poging.csv\n", check=False)
        assert result.returncode != 0 and "denied" in (result.stdout + result.stderr).lower()
    else:
        with pytest.raises(AssertionError):
            lftp(server, "genk-clerk", f"put {src} -o /poging.csv")
    assert deliveries(server) == []
    assert os.listdir(server.data_dir / "tmp") == []

"""The SSH algorithms sluis offers (server/sftp/algorithms.py), checked from the outside.

- the server's KEXINIT, read off a raw socket: exactly the lists we chose, strict kex included;
- OpenSSH sftp, PuTTY psftp and paramiko, with their default settings, negotiate one of them and
  move a file both ways;
- a client that offers only weak algorithms is refused;
- an RSA host key signs only with SHA-2, and a weak or odd host key stops `serve` at start;
- ssh-audit (PyPI) against the live server: no failure, no warning but curve25519's quantum note.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path

import asyncssh
import paramiko
import pytest
from asyncssh.crypto import sntrup_available

from sluis.server.sftp import algorithms
from tests.support.clients import require_binary
from tests.support.clients_extra import blob, decrypt_file, env_without_agent
from tests.support.server import SluisServer

TIMEOUT = 60
SNTRUP = ["sntrup761x25519-sha512", "sntrup761x25519-sha512@openssh.com"] if sntrup_available else []
KEX = ["mlkem768x25519-sha256", *SNTRUP, "curve25519-sha256", "curve25519-sha256@libssh.org"]
CIPHERS = ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com",
           "aes256-ctr", "aes192-ctr", "aes128-ctr"]
MACS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"]
# Spelled out here rather than read from the module, so that a change there has to change this too.
BASE_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10"]
# server-sig-algs: the user-key signatures the server names (no ssh-rsa SHA-1, no @ssh.com)
USER_SIGNATURES = ["ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ssh-ed448", "rsa-sha2-512", "rsa-sha2-256",
                   "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                   "sk-ecdsa-sha2-nistp256@openssh.com"]
PQ_NOTE = "does not provide protection against post-quantum attacks"


def server_kexinit(port: int) -> dict[str, list[str]]:
    """The name-lists of the server's first KEXINIT (sent in the clear, before any key exchange)."""
    fields = ("kex", "host_key", "enc_c2s", "enc_s2c", "mac_c2s", "mac_s2c", "comp_c2s", "comp_s2c")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rb") as stream:
        sock.sendall(b"SSH-2.0-probe\r\n")
        while not stream.readline().startswith(b"SSH-2.0-"):
            pass
        length, padding = struct.unpack(">IB", stream.read(5))
        payload = stream.read(length - 1)[:length - 1 - padding]
    assert payload[0] == 20, "the server's first packet is not KEXINIT"
    offset, lists = 17, {}
    for field in fields:
        (size,) = struct.unpack(">I", payload[offset:offset + 4])
        lists[field] = payload[offset + 4:offset + 4 + size].decode().split(",")
        offset += 4 + size
    return lists


def with_rsa_host_key(make_server, bits: int, key_type: str = "ssh-rsa") -> SluisServer:
    """A standard server whose host keys are the ed25519 one and a second key made here."""
    server = make_server(overrides={"server": {"host_keys": ["ssh_host_ed25519_key", "ssh_host_extra_key"]}})
    key = asyncssh.generate_private_key(key_type, **({"key_size": bits} if key_type == "ssh-rsa" else {}))
    path = server.data_dir / "ssh_host_extra_key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key("openssh"))
    return server.standard()


def run(cmd: list[str], *, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, input=stdin,
                            stdin=None if stdin is not None else subprocess.DEVNULL, env=env_without_agent())
    if check:
        assert result.returncode == 0, f"{cmd[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def openssh_sftp(server: SluisServer, user: str, script: str, *options: str, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
    return run(["sftp", "-v", "-b", "-", "-i", str(server.accounts[user].key), "-P", str(server.port),
                *BASE_OPTIONS, *options, f"{user}@127.0.0.1"], check=check, stdin=script)


def round_trip(server: SluisServer, tmp_path: Path, name: str, upload, download) -> None:
    """Upload as the sender, download as genk-clerk, decrypt: the bytes come back."""
    data = blob(100_003, len(name))
    src = tmp_path / name
    src.write_bytes(data)
    upload(src, f"/genk/{name}")
    got = tmp_path / f"{name}.age"
    download(f"/{name}.age", got)
    assert decrypt_file(got, server.passphrase(name + ".age")) == data


# --- what the server offers ---------------------------------------------------------------------
def test_kexinit_offers_exactly_the_chosen_algorithms(server):
    offer = server_kexinit(server.port)
    assert offer["kex"] == KEX + ["ext-info-s", "kex-strict-s-v00@openssh.com"]
    assert offer["host_key"] == ["ssh-ed25519"]
    assert offer["enc_c2s"] == offer["enc_s2c"] == CIPHERS
    assert offer["mac_c2s"] == offer["mac_s2c"] == MACS
    assert offer["comp_c2s"] == offer["comp_s2c"] == ["none"]


def test_sntrup_is_offered_exactly_when_asyncssh_can_do_it():
    """sntrup761x25519 needs liboqs; without it asyncssh does not register the algorithm."""
    assert ("sntrup761x25519-sha512" in algorithms.available_kex()) == bool(sntrup_available)
    assert "mlkem768x25519-sha256" in algorithms.available_kex()  # cryptography >= 44 has ML-KEM


# --- real clients with their defaults ---------------------------------------------------------------
def test_openssh_defaults_negotiate_a_chosen_set_and_transfer(server, tmp_path):
    require_binary("sftp")
    seen: list[str] = []

    def upload(src: Path, target: str) -> None:
        seen.append(openssh_sftp(server, "agency", f"put {src} {target}\n").stderr)

    def download(source: str, dest: Path) -> None:
        seen.append(openssh_sftp(server, "genk-clerk", f"get {source} {dest}\n").stderr)

    round_trip(server, tmp_path, "openssh.csv", upload, download)
    for log in seen:
        assert re.search(r"kex: algorithm: (\S+)", log)[1] in KEX, log
        assert re.search(r"kex: host key algorithm: (\S+)", log)[1] == "ssh-ed25519"
        cipher, mac = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+) compression: none", log).groups()
        assert cipher in CIPHERS and (mac in MACS or mac == "<implicit>"), log


def test_putty_defaults_negotiate_a_chosen_set_and_transfer(server, tmp_path):
    require_binary("psftp")
    require_binary("puttygen")
    seen: list[str] = []

    def psftp(user: str, script: str) -> None:
        batch = tmp_path / f"psftp-{user}.txt"
        batch.write_text(script)
        seen.append(run(["psftp", "-v", "-batch", "-bc", "-b", str(batch), "-P", str(server.port), "-noagent",
                         "-i", str(server.accounts[user].ppk()), "-hostkey", server.host_key_fingerprint(),
                         f"{user}@127.0.0.1"]).stderr)

    round_trip(server, tmp_path, "putty.csv", lambda src, target: psftp("agency", f"put {src} {target}\n"),
               lambda source, dest: psftp("genk-clerk", f"get {source} {dest}\n"))
    for log in seen:
        assert re.search(r"key exchange with curve Curve25519|ML-KEM", log), log
        assert re.search(r"Initialised (ChaCha20|AES-256 GCM|AES-128 GCM|AES-256 SDCTR)", log), log


def test_paramiko_defaults_negotiate_a_chosen_set_and_transfer(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    used: list[tuple[str, str, str]] = []

    def connected(user: str) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
        transport = paramiko.Transport(("127.0.0.1", server.port))
        transport.connect(username=user,
                          pkey=paramiko.Ed25519Key.from_private_key_file(str(server.accounts[user].key)))
        used.append((transport.host_key_type or "", transport.remote_cipher, transport.remote_mac))
        sig_algs = transport.server_extensions["server-sig-algs"]
        assert (sig_algs.decode() if isinstance(sig_algs, bytes) else sig_algs).split(",") == USER_SIGNATURES
        return transport, paramiko.SFTPClient.from_transport(transport)

    def upload(src: Path, target: str) -> None:
        transport, client = connected("agency")
        with transport, client:
            client.put(str(src), target)

    def download(source: str, dest: Path) -> None:
        transport, client = connected("genk-clerk")
        with transport, client:
            client.get(source, str(dest))

    round_trip(server, tmp_path, "paramiko.csv", upload, download)
    kex = re.findall(r"Kex: (\S+)", caplog.text)
    assert len(kex) == 2 and set(kex) <= set(KEX), caplog.text
    for host_key, cipher, mac in used:
        assert host_key == "ssh-ed25519" and cipher in CIPHERS and mac in MACS, used


# --- weak clients are refused -------------------------------------------------------------------
@pytest.mark.parametrize("options, refusal", [
    (["-oKexAlgorithms=diffie-hellman-group14-sha1"], "no matching key exchange method"),
    (["-oKexAlgorithms=diffie-hellman-group-exchange-sha256"], "no matching key exchange method"),
    (["-oKexAlgorithms=diffie-hellman-group16-sha512"], "no matching key exchange method"),
    (["-oKexAlgorithms=ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521"],
     "no matching key exchange method"),
    (["-oMACs=hmac-sha1", "-oCiphers=aes128-ctr"], "no matching MAC"),
    (["-oMACs=umac-64-etm@openssh.com,umac-64@openssh.com,hmac-sha2-256", "-oCiphers=aes128-ctr"],
     "no matching MAC"),
    (["-oCiphers=aes128-cbc"], "no matching cipher"),
    (["-oCiphers=aes256-cbc,3des-cbc"], "no matching cipher"),
    (["-oHostKeyAlgorithms=ssh-rsa,ecdsa-sha2-nistp256"], "no matching host key type"),
], ids=["group14-sha1", "gex-sha256", "group16", "nist-ecdh", "hmac-sha1", "umac64-non-etm", "cbc", "cbc-3des",
        "rsa-sha1-host-key"])
def test_weak_only_client_is_refused(server, options, refusal):
    require_binary("sftp")
    result = openssh_sftp(server, "agency", "ls /\n", *options, check=False)
    assert result.returncode != 0
    assert refusal in result.stderr, result.stderr


def test_paramiko_with_only_sha1_macs_is_refused(server):
    transport = paramiko.Transport(("127.0.0.1", server.port))
    transport.disabled_algorithms = {"macs": [m for m in transport.preferred_macs if m not in ("hmac-sha1",)],
                                     "ciphers": [c for c in transport.preferred_ciphers if not c.endswith("-ctr")]}
    with transport, pytest.raises(paramiko.SSHException, match="no acceptable macs|Incompatible"):
        transport.connect(username="agency",
                          pkey=paramiko.Ed25519Key.from_private_key_file(str(server.accounts["agency"].key)))


# --- host keys ----------------------------------------------------------------------------------------
def test_rsa_host_key_signs_with_sha2_only(make_server):
    require_binary("sftp")
    server = with_rsa_host_key(make_server, 3072).start()
    assert server_kexinit(server.port)["host_key"] == ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]
    ok = openssh_sftp(server, "agency", "ls /\n", "-oHostKeyAlgorithms=rsa-sha2-256")
    assert "kex: host key algorithm: rsa-sha2-256" in ok.stderr
    refused = openssh_sftp(server, "agency", "ls /\n", "-oHostKeyAlgorithms=ssh-rsa", check=False)
    assert refused.returncode != 0 and "no matching host key type" in refused.stderr, refused.stderr


@pytest.mark.parametrize("key_type, bits, message", [
    ("ssh-rsa", 2048, "has 2048 bits; sluis needs at least 3072"),
    ("ecdsa-sha2-nistp256", 0, "is ecdsa-sha2-nistp256; sluis serves ed25519"),
])
def test_weak_or_odd_host_key_stops_serve_with_a_clear_error(make_server, key_type, bits, message):
    server = with_rsa_host_key(make_server, bits, key_type)
    with pytest.raises(RuntimeError, match="sluis serve exited with 1") as failed:
        server.start()
    assert message in str(failed.value)
    assert "ssh_host_extra_key" in str(failed.value)


# --- ssh-audit ------------------------------------------------------------------------------------------
def ssh_audit(port: int) -> dict:
    try:
        import ssh_audit  # noqa: F401  (the test extra installs it)
    except ImportError:
        if os.environ.get("SLUIS_REQUIRE_CLIENTS") == "1":
            pytest.fail("ssh-audit is not installed, and SLUIS_REQUIRE_CLIENTS=1 requires it")
        pytest.skip("ssh-audit is not installed (pip install -e .[test])")
    # The DHEat rate probe is skipped: it measures how fast loopback accepts 38 connections, which
    # is the pre-auth caps' business (tests of their own), not an algorithm, and it is timing-bound.
    result = subprocess.run([sys.executable, "-m", "ssh_audit", "--json", "--skip-rate-test", "-p", str(port),
                             "127.0.0.1"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.stdout.strip(), f"ssh-audit said nothing (exit {result.returncode}): {result.stderr}"
    return json.loads(result.stdout)


def findings(report: dict) -> list[tuple[str, str, str, str]]:
    """Every (section, algorithm, level, note) at warn or fail level."""
    return [(section, entry["algorithm"], level, note)
            for section in ("kex", "key", "enc", "mac") for entry in report[section]
            for level in ("fail", "warn") for note in entry.get("notes", {}).get(level, [])]


@pytest.mark.parametrize("rsa", [False, True], ids=["ed25519", "ed25519+rsa3072"])
def test_ssh_audit_finds_nothing_but_the_curve25519_quantum_note(make_server, rsa):
    server = (with_rsa_host_key(make_server, 3072) if rsa else make_server().standard()).start()
    report = ssh_audit(server.port)
    assert {entry["algorithm"] for entry in report["kex"]} >= {"mlkem768x25519-sha256", "kex-strict-s-v00@openssh.com"}
    unexpected = [f for f in findings(report)
                  if not (f[0] == "kex" and f[1].startswith("curve25519-sha256") and f[2:] == ("warn", PQ_NOTE))]
    assert unexpected == [], unexpected
    assert report["cves"] == [] and report["recommendations"] == {}, report
    assert report["compression"] == ["none"]

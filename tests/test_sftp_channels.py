"""Only the 'sftp' subsystem: no shell, exec, pty, legacy scp, port forwarding, agent or X11
forwarding (checked with the real OpenSSH client and with paramiko). And authentication: unknown
user, wrong key and disabled user are refused and audited with source address and key fingerprint.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from typing import Iterator

import paramiko
import pytest
from paramiko.ssh_exception import AuthenticationException, ChannelException, SSHException

from sluis.server.cli.common import operator
from tests.support.clients import require_binary
from tests.support.clients_extra import (
    TIMEOUT, audit, channel_request, connect, deliveries, sftp_on, transport, wait_audit, wait_until,
)
from tests.support.loopback import free_port, stop_process
from tests.support.server import SluisServer


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluisServer]:
    server = SluisServer(tmp_path_factory.mktemp("channels")).standard()
    server.add_user("retired", "sender")
    server.app().directory.disable_user(operator(), "retired")
    server.start()
    try:
        yield server
    finally:
        server.close()


def ssh(server: SluisServer, *args: str, user: str = "agency", timeout: float = 20,
        stdin: str = "") -> subprocess.CompletedProcess[str]:
    require_binary("ssh")
    return subprocess.run(["ssh", "-p", str(server.port), *server.ssh_args(user), *args],
                          input=stdin, capture_output=True, text=True, timeout=timeout)


class Target:
    """A TCP listener that counts the connections it gets (a forwarding must never reach it)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.sendall(b"reached the target\n")
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def target() -> Iterator[Target]:
    t = Target()
    yield t
    t.close()


# --- the real OpenSSH client ------------------------------------------------------------------------
def test_exec_is_refused(shared):
    result = ssh(shared, "agency@127.0.0.1", "true")
    assert result.returncode != 0
    assert "exec request failed" in result.stderr


def test_shell_and_pty_are_refused(shared):
    result = ssh(shared, "-tt", "agency@127.0.0.1", stdin="echo hello\nexit\n")
    assert result.returncode != 0
    assert "hello" not in result.stdout
    result = ssh(shared, "-T", "agency@127.0.0.1", stdin="echo hello\nexit\n")
    assert result.returncode != 0
    assert "hello" not in result.stdout


def test_legacy_scp_is_refused(shared, tmp_path):
    require_binary("scp")
    source = tmp_path / "lijst.csv"
    source.write_bytes(b"x" * 5000)
    result = subprocess.run(["scp", "-O", "-P", str(shared.port), *shared.ssh_args("agency"), str(source),
                             "agency@127.0.0.1:/genk/lijst.csv"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0
    assert deliveries(shared) == []
    download = subprocess.run(["scp", "-O", "-P", str(shared.port), *shared.ssh_args("genk-clerk"),
                               "genk-clerk@127.0.0.1:/etc/passwd", str(tmp_path / "passwd")],
                              capture_output=True, text=True, timeout=TIMEOUT)
    assert download.returncode != 0
    assert not (tmp_path / "passwd").exists()


def test_local_port_forwarding_is_refused(shared, target):
    """ssh binds the local port only once logged in; the server must refuse each channel opened."""
    require_binary("ssh")
    local = free_port()
    proc = subprocess.Popen(["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-L",
                             f"127.0.0.1:{local}:127.0.0.1:{target.port}", "-p", str(shared.port),
                             *shared.ssh_args("agency"), "agency@127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # (stderr stays quiet: SSH_OPTIONS sets LogLevel=ERROR, and 'open failed' is logged below that)
    try:
        def listening() -> socket.socket | None:
            if proc.poll() is not None:
                raise AssertionError(f"ssh exited early: {proc.stderr.read() if proc.stderr else ''}")
            try:
                return socket.create_connection(("127.0.0.1", local), timeout=1)
            except OSError:
                return None

        conn = wait_until(listening, timeout=20, what="ssh's local listener")
        with conn:
            conn.settimeout(10)
            try:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                received = conn.recv(100)
            except (ConnectionResetError, BrokenPipeError):
                received = b""
        assert received == b""                   # ssh closed it: the server refused the channel
    finally:
        stop_process(proc)
    assert target.accepted == 0


def test_remote_port_forwarding_is_refused(shared):
    result = ssh(shared, "-N", "-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{free_port()}:127.0.0.1:22",
                 "agency@127.0.0.1")
    assert result.returncode != 0
    assert "remote port forwarding failed" in result.stderr


def test_stdio_forwarding_is_refused(shared, target):
    result = ssh(shared, "-W", f"127.0.0.1:{target.port}", "agency@127.0.0.1")
    assert result.returncode != 0
    assert "reached the target" not in result.stdout
    assert "stdio forwarding failed" in result.stderr
    assert target.accepted == 0


# --- paramiko -----------------------------------------------------------------------------------------
@pytest.fixture
def session(shared) -> Iterator[paramiko.Transport]:
    t = transport(shared, "agency")
    yield t
    t.close()


def test_paramiko_exec_and_shell_are_refused(session):
    with pytest.raises(SSHException):
        session.open_session(timeout=10).exec_command("id")
    with pytest.raises(SSHException):
        session.open_session(timeout=10).invoke_shell()
    with pytest.raises(SSHException):
        session.open_session(timeout=10).get_pty()
    with pytest.raises(SSHException):
        session.open_session(timeout=10).invoke_subsystem("shell")
    # the same connection still does SFTP
    chan = session.open_session(timeout=10)
    chan.invoke_subsystem("sftp")
    assert sorted(paramiko.SFTPClient(chan).listdir("/")) == ["genk", "gent", "receipts"]


def test_paramiko_forwarding_is_refused(session, target):
    with pytest.raises((ChannelException, SSHException)):
        session.open_channel("direct-tcpip", ("127.0.0.1", target.port), ("127.0.0.1", 5555), timeout=10)
    with pytest.raises((ChannelException, SSHException)):
        session.open_channel("direct-streamlocal@openssh.com", timeout=10)
    with pytest.raises(SSHException):
        session.request_port_forward("127.0.0.1", 0)
    assert target.accepted == 0


def test_paramiko_agent_and_x11_forwarding_are_refused(session):
    assert channel_request(session.open_session(timeout=10), "auth-agent-req@openssh.com") is False
    with pytest.raises(SSHException):
        session.open_session(timeout=10).request_x11()
    assert session.is_active()


# --- authentication --------------------------------------------------------------------------------------
def key_fingerprint(server: SluisServer, user: str) -> str:
    import asyncssh

    return asyncssh.read_public_key(str(server.accounts[user].pub)).get_fingerprint("sha256")


@pytest.mark.parametrize("user, key_of, reason", [
    ("nobody", "agency", "unknown user"),
    ("agency", "genk-clerk", "key not registered"),
    ("genk-clerk", "gent-clerk", "key not registered"),
    ("retired", "retired", "user disabled"),
])
def test_refused_logins_are_audited(shared, user, key_of, reason):
    sock = socket.create_connection(("127.0.0.1", shared.port), timeout=10)
    source = "%s:%d" % sock.getsockname()
    t = paramiko.Transport(sock)
    try:
        with pytest.raises(AuthenticationException):
            t.connect(username=user,
                      pkey=paramiko.Ed25519Key.from_private_key_file(str(shared.accounts[key_of].key)))
    finally:
        t.close()
    [record] = wait_audit(shared, "auth.failure", lambda r: r["source"] == source)
    assert record["actor"] == user
    assert record["detail"]["reason"] == reason
    assert record["detail"]["method"] == "publickey"
    assert record["detail"]["key"] == key_fingerprint(shared, key_of)
    assert not [r for r in audit(shared, "auth.success") if r["source"] == source]


def test_refused_login_with_openssh_client(shared):
    seen = {r["seq"] for r in audit(shared, "auth.failure")}
    result = ssh(shared, "-s", "ghost@127.0.0.1", "sftp")
    assert result.returncode != 0
    assert "Permission denied" in result.stderr
    [record] = wait_audit(shared, "auth.failure", lambda r: r["seq"] not in seen)
    assert (record["actor"], record["detail"]["reason"]) == ("ghost", "unknown user")
    assert record["detail"]["key"] == key_fingerprint(shared, "agency")
    assert record["source"].startswith("127.0.0.1:")


def test_successful_login_is_audited(shared):
    t = transport(shared, "genk-clerk")
    try:
        source = "%s:%d" % t.sock.getsockname()
        assert sftp_on(t).listdir("/") == []
    finally:
        t.close()
    [record] = wait_audit(shared, "auth.success", lambda r: r["source"] == source)
    assert (record["actor"], record["tenant"]) == ("genk-clerk", "genk")
    assert record["detail"]["method"] == "publickey"
    assert record["detail"]["key"] == key_fingerprint(shared, "genk-clerk")
    assert record["detail"]["session"]


def test_disabling_a_user_refuses_its_next_login(make_server):
    server = make_server().standard().start()
    with connect(server, "gent-clerk") as client:
        assert client.listdir("/") == []
    server.app().directory.disable_user(operator(), "gent-clerk")
    with pytest.raises(AuthenticationException):
        transport(server, "gent-clerk")
    wait_audit(server, "auth.failure", lambda r: r["detail"]["reason"] == "user disabled")
    # the other users are unaffected
    with connect(server, "genk-clerk") as client:
        assert client.listdir("/") == []


def test_disabling_a_tenant_refuses_its_recipients(make_server):
    server = make_server().standard().start()
    server.app().directory.disable_tenant(operator(), "gent")
    with pytest.raises(AuthenticationException):
        transport(server, "gent-clerk")
    wait_audit(server, "auth.failure", lambda r: r["detail"]["reason"] == "tenant disabled")
    with connect(server, "agency") as client:
        assert client.listdir("/") == ["genk", "receipts"]   # and its folder is gone for senders


def test_password_login_and_unknown_user_cost_the_same_check(make_server):
    """A recipient with a password logs in with it; a wrong one and an unknown user are refused."""
    import paramiko

    server = make_server().standard()
    server.app().directory.add_user(operator(), "genk-pw", role="recipient", tenant="genk",
                                    password="correct horse battery")
    server.start()
    for user, password, ok in (("genk-pw", "correct horse battery", True), ("genk-pw", "wrong", False),
                               ("nobody", "correct horse battery", False)):
        t = paramiko.Transport(("127.0.0.1", server.port))
        try:
            t.connect()
            if ok:
                t.auth_password(user, password)
                assert paramiko.SFTPClient.from_transport(t).listdir("/") == []
            else:
                with pytest.raises(AuthenticationException):
                    t.auth_password(user, password)
        finally:
            t.close()
    wait_audit(server, "auth.failure", lambda r: r["actor"] == "nobody" and r["detail"]["reason"] == "unknown user")

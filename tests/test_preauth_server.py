"""Before authentication, against a real `sluis serve` and real clients (paramiko, raw sockets),
each client bound to its own 127.0.0.x source: brute force gets a source banned (and the ban
survives a restart) while others log in, allowlisted sources never are, silent connections are
capped and cut at the login timeout, out-of-order protocol ends in a disconnect and counts,
password hashing cannot slow key logins, no login without its `auth.success` record, disabling
a user or tenant ends its live sessions, sessions per user are capped.

Figures for the report are printed (run with -s): time to ban, login latency under 500 silent
connections, the server's descriptors and memory meanwhile.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import statistics
import struct
import threading
import time
from typing import Any

import asyncssh
import paramiko
import pytest
from paramiko.ssh_exception import AuthenticationException, SSHException

from tests.support.clients_extra import audit
from tests.support.library import sluis
from tests.support.loopback import closed_without_a_word, connect_from
from tests.support.pg import fail_audit_inserts, heal_audit_inserts
from tests.support.server import SluisServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)
GUESSER, OTHER = "127.0.0.2", "127.0.0.3"


# --- clients -------------------------------------------------------------------------------------------
def key_login(server: SluisServer, user: str, source: str) -> float:
    """A full key login and one listing from `source`; returns the seconds it took."""
    started = time.monotonic()
    transport = paramiko.Transport(connect_from(server, source))
    try:
        transport.connect(username=user,
                          pkey=paramiko.Ed25519Key.from_private_key_file(str(server.accounts[user].key)))
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        client.listdir("/")
        return time.monotonic() - started
    finally:
        transport.close()


def session(server: SluisServer, user: str, source: str = "127.0.0.1") -> tuple[paramiko.Transport, Any]:
    transport = paramiko.Transport(connect_from(server, source))
    transport.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(str(server.accounts[user].key)))
    client = paramiko.SFTPClient.from_transport(transport)
    client.listdir("/")
    return transport, client


def guess_passwords(server: SluisServer, source: str, user: str, tries: int) -> int | None:
    """One connection guessing passwords; the number of guesses made, None if refused outright."""
    try:
        transport = paramiko.Transport(connect_from(server, source))
        transport.start_client(timeout=10)
    except (SSHException, EOFError, OSError):
        return None
    made = 0
    try:
        for n in range(tries):   # paramiko manages one attempt per connection with asyncssh (see auth.py)
            try:
                transport.auth_password(user, f"guess-{n}")
            except AuthenticationException:
                made += 1
                continue
            except (SSHException, EOFError, OSError):
                break
    finally:
        transport.close()
    return made


def random_key() -> paramiko.PKey:
    """A fresh ed25519 key no account has."""
    text = asyncssh.generate_private_key("ssh-ed25519").export_private_key("openssh").decode()
    return paramiko.Ed25519Key(file_obj=io.StringIO(text))


def refused_before_ssh(server: SluisServer, source: str) -> bool:
    """True when the server closes the socket without sending even its version line."""
    return closed_without_a_word(connect_from(server, source))


def greeted(sock: socket.socket) -> bool:
    """True when the server sent its version line on this socket."""
    try:
        return sock.recv(64).startswith(b"SSH-2.0-sluis")
    except OSError:
        return False


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed `sock` (reading whatever it sends), None if it did not."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except socket.timeout:
        return None
    except OSError:
        pass
    return time.monotonic() - started


def bans_of(server: SluisServer, address: str) -> list[dict[str, Any]]:
    return [r for r in audit(server, "auth.ban") if r["detail"]["address"] == address]


def server_figures(server: SluisServer) -> tuple[int, int]:
    """(open descriptors, resident memory in KiB) of the server process."""
    assert server.process is not None
    pid = server.process.pid
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))
    return fds, rss


# --- brute force -----------------------------------------------------------------------------------------
def test_password_guessing_bans_the_source_while_another_logs_in_and_the_ban_survives_a_restart(make_server):
    srv = make_server().standard().start()
    started, guesses = time.monotonic(), 0
    for _ in range(30):
        made = guess_passwords(srv, GUESSER, "agency", 6)
        if made is None:
            break
        guesses += made
    else:
        pytest.fail(f"{GUESSER} was never shut out after {guesses} guesses{srv.log[-3000:]}")
    took = time.monotonic() - started
    guesses = len([r for r in audit(srv, "auth.failure") if r["source"].startswith(GUESSER + ":")])
    print(f"\nFIGURE time to ban a password guesser: {took:.2f}s, {guesses} wrong passwords (threshold 15)")
    [ban] = bans_of(srv, GUESSER)
    assert ban["detail"]["score"] >= 15 and set(ban["detail"]["reasons"]) == {"failure"}
    assert ban["source"].startswith(GUESSER + ":")
    assert refused_before_ssh(srv, GUESSER)
    with pytest.raises((SSHException, EOFError, OSError)):
        key_login(srv, "agency", GUESSER)           # the right key does not help a banned source
    assert key_login(srv, "agency", OTHER) < 5
    [refused] = wait_until(lambda: [r for r in audit(srv, "auth.refused") if r["detail"]["address"] == GUESSER],
                           "an auth.refused record")
    assert refused["detail"]["why"] == "banned" and refused["detail"]["count"] == 1

    srv.stop()
    srv.start()
    assert refused_before_ssh(srv, GUESSER)
    assert key_login(srv, "genk-clerk", OTHER) < 5

    listed = sluis(srv.config, "bans", "list", "--json")
    assert GUESSER in listed.stdout, listed.stderr
    lifted = sluis(srv.config, "bans", "lift", GUESSER)
    assert lifted.returncode == 0, lifted.stderr
    [record] = wait_until(lambda: audit(srv, "auth.unban"), "an auth.unban record")
    assert record["detail"]["address"] == GUESSER and record["actor"].startswith("admin:")
    wait_until(lambda: not refused_before_ssh(srv, GUESSER), "the lifted ban to take effect in serve", timeout=10)
    assert key_login(srv, "agency", GUESSER) < 5


def userauth_request(user: str, method: str) -> paramiko.Message:
    message = paramiko.Message()
    message.add_byte(bytes([50]))                       # SSH_MSG_USERAUTH_REQUEST
    message.add_string(user)
    message.add_string("ssh-connection")
    message.add_string(method)
    if method == "keyboard-interactive":
        message.add_string("")
        message.add_string("")
    return message


def test_the_attempt_cap_holds_for_every_method(make_server):
    srv = make_server().standard().start()
    transport = paramiko.Transport(connect_from(srv, "127.0.0.9"))
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as offered:
            transport.auth_none("agency")                 # every client's first probe: free
        assert offered.value.allowed_types == ["publickey", "password"]   # no keyboard-interactive
        for method in ["none", "keyboard-interactive", "hostbased", "none", "keyboard-interactive", "none"]:
            transport._send_message(userauth_request("agency", method))
        wait_until(lambda: not transport.is_active(), "the server to disconnect after 6 failed attempts")
    finally:
        transport.close()
    srv.wait_for(r"connection from 127\.0\.0\.9:\d+: 6 failed authentication attempts, disconnected")


def test_key_guessing_scores_once_per_failed_connection_not_per_key(make_server):
    srv = make_server({"defender": {"threshold": 4}}).standard().start()
    source = "127.0.0.4"

    def try_keys(then_the_right_one: bool = False) -> bool:
        """One asyncssh connection offering three unregistered keys (and then, perhaps, the right
        one); False if refused outright."""
        async def attempt() -> bool:
            keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(3)]
            if then_the_right_one:
                keys.append(asyncssh.read_private_key(str(srv.accounts["agency"].key)))
            try:
                async with asyncssh.connect("127.0.0.1", srv.port, local_addr=(source, 0), username="agency",
                                            client_keys=keys, known_hosts=None, agent_path=None,
                                            password=None, connect_timeout=10):
                    assert then_the_right_one, "logged in with unregistered keys"
            except asyncssh.PermissionDenied:
                return not then_the_right_one
            except (OSError, asyncssh.Error):
                return False
            return True

        return asyncio.run(attempt())

    for _ in range(6):                                     # rejected keys, then a login: no penalty
        assert try_keys(then_the_right_one=True)
    for _ in range(3):
        assert try_keys()
    assert not bans_of(srv, source)                        # 9 rejected keys, 3 connections: score 3
    assert try_keys()
    wait_until(lambda: bans_of(srv, source), "a ban after the fourth connection")
    assert not try_keys() and refused_before_ssh(srv, source)


def test_an_allowlisted_source_is_never_banned(make_server):
    source = "127.0.0.5"
    srv = make_server({"defender": {"threshold": 3, "allowlist": [f"{source}/32"]}}).standard().start()
    made = []
    for _ in range(6):                                   # scores at least 6 x 1 + 6 x 3, threshold 3
        made += [guess_passwords(srv, source, "agency", 6), guess_passwords(srv, source, "nobody", 6)]
    assert None not in made
    assert len(audit(srv, "auth.failure")) >= 12
    assert not audit(srv, "auth.ban") and not refused_before_ssh(srv, "127.0.0.5")
    assert key_login(srv, "agency", source) < 5


# --- silent and malformed connections ----------------------------------------------------------------
def test_500_silent_connections_do_not_delay_a_key_login(make_server):
    srv = make_server().standard().start()
    baseline = [key_login(srv, "agency", OTHER) for _ in range(3)]
    idle_fds, idle_rss = server_figures(srv)
    flood: list[socket.socket] = []
    try:
        for n in range(500):
            try:
                flood.append(connect_from(srv, f"127.0.1.{n % 20 + 1}"))
            except OSError:
                pass
        assert len(flood) >= 450
        loaded = [key_login(srv, "agency", OTHER) for _ in range(5)]
        fds, rss = server_figures(srv)
        held = sum(1 for sock in flood[-100:] if greeted(sock))
    finally:
        for sock in flood:
            sock.close()
    print(f"\nFIGURE key login latency: idle median {statistics.median(baseline):.3f}s; "
          f"under 500 silent connections median {statistics.median(loaded):.3f}s max {max(loaded):.3f}s")
    print(f"FIGURE server: idle {idle_fds} fds {idle_rss} KiB RSS; under 500 silent connections "
          f"{fds} fds {rss} KiB RSS")
    assert max(loaded) < 2.0
    assert fds < idle_fds + 100 + 20        # at most max_startups silent sockets are held
    assert held == 0                        # the last 100 came when max_startups was full
    refused = [r for r in audit(srv, "auth.refused")]
    assert {r["detail"]["why"] for r in refused} == {"max_startups"}     # 20 sources x 5 fill 100


def test_silent_connections_are_cut_at_the_login_timeout_and_penalised(make_server):
    srv = make_server({"server": {"login_timeout": "2s"}, "defender": {"threshold": 6}}).standard().start()
    source = "127.0.0.6"
    for _ in range(2):
        sock = connect_from(srv, source)
        try:
            assert greeted(sock)
            took = closed_within(sock, 10)
        finally:
            sock.close()
        assert took is not None and 1.0 < took < 6, took
    [ban] = wait_until(lambda: bans_of(srv, source), "a ban after two login timeouts")
    assert ban["detail"]["reasons"] == {"login_timeout": 6}
    assert refused_before_ssh(srv, source)


def packet(payload: bytes) -> bytes:
    """An unencrypted SSH binary packet (RFC 4253 6)."""
    pad = 8 - (len(payload) + 5) % 8
    pad += 8 if pad < 4 else 0
    return struct.pack(">IB", len(payload) + 1 + pad, pad) + payload + b"\0" * pad


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


OUT_OF_ORDER = {
    "a garbage version line": b"GET / HTTP/1.1\r\nHost: sluis\r\n\r\n",
    "USERAUTH_REQUEST before key exchange": b"SSH-2.0-probe\r\n" + packet(
        bytes([50]) + ssh_string(b"agency") + ssh_string(b"ssh-connection") + ssh_string(b"none")),
    "CHANNEL_OPEN before key exchange": b"SSH-2.0-probe\r\n" + packet(
        bytes([90]) + ssh_string(b"session") + struct.pack(">III", 0, 65536, 32768)),
}


def test_out_of_order_pre_auth_messages_end_in_a_disconnect_and_count(make_server):
    srv = make_server({"defender": {"threshold": 9}}).standard().start()
    source = "127.0.0.7"
    for what, data in OUT_OF_ORDER.items():
        sock = connect_from(srv, source)
        try:
            sock.sendall(data)
            assert closed_within(sock, 10) is not None, what    # long before the 30 s login timeout
        finally:
            sock.close()
    lines = wait_until(lambda: len(re.findall(rf"protocol error from {source}:\d+ before", srv.log)) >= 3,
                       "three protocol errors in the log")
    assert lines
    [ban] = wait_until(lambda: bans_of(srv, source), "a ban after three protocol errors")
    assert ban["detail"]["reasons"] == {"protocol_error": 9}
    [record] = [r for r in audit(srv, "protocol.error") if r["source"].startswith(source + ":")]
    assert record["detail"]["what"] == "Unsupported SSH version"
    assert refused_before_ssh(srv, source)
    assert key_login(srv, "agency", OTHER) < 5


def test_unauthenticated_caps_per_source_and_in_total(make_server):
    srv = make_server({"server": {"per_source_max_startups": 3, "max_startups": 5}}).standard().start()
    heavy = [connect_from(srv, "127.0.0.11") for _ in range(3)]
    light = [connect_from(srv, "127.0.0.12") for _ in range(2)]
    try:
        assert all(greeted(sock) for sock in heavy + light)
        assert refused_before_ssh(srv, "127.0.0.11")                     # per source
        newcomer = connect_from(srv, "127.0.0.13")                        # total full: displaces .11's oldest
        assert greeted(newcomer)
        assert closed_within(heavy[0], 5) is not None
        assert key_login(srv, "agency", OTHER) < 5                        # displaces another of .11
        newcomer.close()
    finally:
        for sock in heavy + light:
            sock.close()
    whys = wait_until(lambda: {r["detail"]["why"] for r in audit(srv, "auth.refused")}, "auth.refused records")
    assert "per_source_max_startups" in whys
    assert not audit(srv, "auth.ban")


# --- password hashing apart from key logins --------------------------------------------------------------
def test_password_guessers_do_not_slow_key_logins(make_server):
    guessers = "127.0.0.8"
    srv = make_server({"server": {"password_threads": 1, "password_queue": 2},
                       "defender": {"allowlist": [f"{guessers}/32"]}}).standard().start()
    baseline = [key_login(srv, "agency", OTHER) for _ in range(3)]
    stop = threading.Event()

    def guess() -> None:
        while not stop.is_set():
            guess_passwords(srv, guessers, "agency", 6)

    threads = [threading.Thread(target=guess, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(audit(srv, "auth.failure")) >= 10, "the guessers to get going", timeout=30)
        loaded = [key_login(srv, "genk-clerk", OTHER) for _ in range(5)]
        fds, rss = server_figures(srv)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    print(f"\nFIGURE key login under 8 password guessers: median {statistics.median(loaded):.3f}s "
          f"max {max(loaded):.3f}s (idle median {statistics.median(baseline):.3f}s); server {fds} fds {rss} KiB RSS")
    assert max(loaded) < 2.0
    reasons = {r["detail"]["reason"] for r in audit(srv, "auth.failure")}
    assert "server busy checking passwords" in reasons     # beyond the queue, attempts fail at once


# --- after the signature: the record, the caps, the end of a session --------------------------------------
def test_no_login_without_its_auth_success_record(make_server):
    srv = make_server().standard().start()
    fail_audit_inserts(srv, "auth.success", "disk full")
    with pytest.raises((SSHException, EOFError, OSError)):
        session(srv, "agency")
    srv.wait_for(r"login of agency from 127\.0\.0\.1:\d+ refused: its auth.success record could not be written")
    assert not audit(srv, "auth.success")
    heal_audit_inserts(srv)
    transport, client = session(srv, "agency")
    transport.close()
    assert [r["actor"] for r in audit(srv, "auth.success")] == ["agency"]


def test_disabling_a_user_or_tenant_ends_its_live_sessions(make_server):
    srv = make_server().standard().start()
    clerk, _ = session(srv, "genk-clerk")
    gent, _ = session(srv, "gent-clerk")
    agency, agency_sftp = session(srv, "agency")
    try:
        assert sluis(srv.config, "user", "disable", "genk-clerk").returncode == 0
        started = time.monotonic()
        wait_until(lambda: not clerk.is_active(), "genk-clerk's session to end", timeout=10)
        print(f"\nFIGURE disabled user's session ended after {time.monotonic() - started:.2f}s")
        assert sluis(srv.config, "tenant", "disable", "gent").returncode == 0
        wait_until(lambda: not gent.is_active(), "gent-clerk's session to end", timeout=10)
        assert agency.is_active() and agency_sftp.listdir("/") is not None
    finally:
        for transport in (clerk, gent, agency):
            transport.close()
    ended = wait_until(lambda: {r["actor"]: r for r in audit(srv, "session.terminated")}, "session.terminated")
    assert set(ended) == {"genk-clerk", "gent-clerk"}
    assert ended["gent-clerk"]["tenant"] == "gent" and ended["genk-clerk"]["detail"]["reason"] == "account disabled"


def test_sessions_per_user_are_capped(make_server):
    srv = make_server({"server": {"max_sessions_per_user": 2}}).standard().start()
    first, _ = session(srv, "agency")
    second, _ = session(srv, "agency")
    try:
        with pytest.raises((SSHException, EOFError, OSError)):
            session(srv, "agency")
        [limit] = wait_until(lambda: audit(srv, "sftp.limit"), "an sftp.limit record")
        assert limit["detail"] == {"limit": "max_sessions_per_user", "value": 3, "allowed": 2}
        other, _ = session(srv, "genk-clerk")
        other.close()
    finally:
        first.close()
    third = wait_until(lambda: _try_session(srv, "agency"), "a free session slot after one ended", timeout=10)
    third.close()
    second.close()


def _try_session(srv: SluisServer, user: str) -> paramiko.Transport | None:
    try:
        return session(srv, user)[0]
    except (SSHException, EOFError, OSError):
        return None


def test_out_of_order_message_after_login_is_recorded_but_not_penalised(make_server):
    srv = make_server({"defender": {"threshold": 1}}).standard().start()
    transport, _ = session(srv, "agency", OTHER)
    try:
        message = paramiko.Message()
        message.add_byte(bytes([31]))                    # a key-exchange reply, from the client, unasked
        message.add_string("nonsense")
        transport._send_message(message)
        wait_until(lambda: not transport.is_active(), "the server to disconnect")
    finally:
        transport.close()
    [record] = wait_until(lambda: audit(srv, "protocol.error"), "a protocol.error record")
    assert record["actor"] == "agency" and record["detail"]["stage"] == "after authentication"
    assert not audit(srv, "auth.ban")
    assert key_login(srv, "agency", OTHER) < 5

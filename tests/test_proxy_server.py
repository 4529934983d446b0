"""[server] proxy_protocol against a real `sluis serve`, with headers written by the test from
chosen 127.0.0.x sources (HAProxy itself: tests/test_haproxy.py): the header's client is the
address of audit, log, penalties and bans; an untrusted peer is refused whatever it sends; a
trusted peer sending garbage or nothing within proxy_timeout is dropped and penalised; a LOCAL
check is answered with the version line, silently."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import paramiko
import pytest

from sluis.config import load_settings
from sluis.config.load import ConfigError
from sluis.server.sftp.gate import Gatekeeper
from sluis.server.sftp.inflight import InFlight
from tests.support import proxyheader
from tests.support.clients_extra import audit, wait_audit
from tests.support.loopback import closed_without_a_word, connect_from
from tests.support.server import SluisServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)
PROXY, STRANGER = "127.0.0.2", "127.0.0.3"
SETTINGS = {"server": {"proxy_protocol": True, "trusted_proxies": [PROXY], "proxy_timeout": "1s"},
            "defender": {"threshold": 6, "score_protocol_error": 3}}


@pytest.fixture
def proxied(make_server) -> SluisServer:
    return make_server(SETTINGS).standard().start()


def login(server: SluisServer, sock: socket.socket, user: str = "genk-clerk") -> list[str]:
    transport = paramiko.Transport(sock)
    try:
        transport.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(str(server.accounts[user].key)))
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        return client.listdir("/")
    finally:
        transport.close()


@pytest.mark.parametrize("header", [proxyheader.v2(("192.0.2.10", 40001)), proxyheader.v1(("192.0.2.10", 40001)),
                                    proxyheader.v2(("2001:db8::7", 40001), ("::1", 2222))],
                         ids=["v2", "v1", "v2-ipv6"])
def test_the_client_in_the_header_is_the_source_everywhere(proxied, header):
    client = "2001:db8::7" if b"TCP6" in header or b"\x21\x21" in header else "192.0.2.10"
    login(proxied, connect_from(proxied, PROXY, header))
    [success] = wait_audit(proxied, "auth.success")
    assert success["source"] == f"{client}:40001"
    assert success["detail"]["via"].startswith(f"{PROXY}:")
    proxied.wait_for(rf'session \S+ of "genk-clerk" from "{re.escape(client)}:40001" ended')
    # the proxy's own address is in no line, but as `via` of the auth.success record
    assert f"{PROXY}:" not in re.sub(r'"via":"[^"]*"', "", proxied.log)


def test_a_peer_not_trusted_is_refused_whatever_it_sends(proxied):
    assert closed_without_a_word(connect_from(proxied, STRANGER, proxyheader.v2(("192.0.2.11", 1234))))
    assert closed_without_a_word(connect_from(proxied, "127.0.0.1"))   # a direct client: refused too
    [refused] = wait_audit(proxied, "auth.refused", lambda r: r["detail"]["address"] == STRANGER)
    assert refused["detail"]["why"] == "untrusted_proxy"
    assert not audit(proxied, "auth.success")


def test_a_trusted_proxy_sending_garbage_or_nothing_is_dropped_and_penalised(proxied):
    assert closed_without_a_word(connect_from(proxied, PROXY, b"SSH-2.0-OpenSSH_9.2\r\n"))
    [error] = wait_audit(proxied, "protocol.error")
    assert error["source"].startswith(f"{PROXY}:") and "not a PROXY protocol header" in error["detail"]["what"]
    started = time.monotonic()
    assert closed_without_a_word(connect_from(proxied, PROXY, proxyheader.v2(("192.0.2.12", 1))[:20]))
    waited = time.monotonic() - started
    assert 0.9 <= waited < 5, waited    # dropped at proxy_timeout (1s), not at the login timeout
    proxied.wait_for(rf"protocol error from {PROXY}:\d+ before authentication: .*no complete PROXY header within 1s")
    # two protocol errors (3 + 3) reach the threshold (6): the proxy itself is banned
    [ban] = wait_audit(proxied, "auth.ban")
    assert ban["detail"]["address"] == PROXY
    assert closed_without_a_word(connect_from(proxied, PROXY, proxyheader.v2(("192.0.2.13", 1))))
    wait_audit(proxied, "auth.refused", lambda r: r["detail"] == {**r["detail"], "address": PROXY, "why": "banned"})


def test_bans_and_penalties_fall_on_the_client_not_the_proxy(proxied):
    for port in (1, 2):   # SSH garbage after a good header: the client broke the protocol
        sock = connect_from(proxied, PROXY, proxyheader.v2(("192.0.2.66", port)) + b"HELLO\r\n")
        wait_until(lambda: closed_without_a_word_or_banner(sock), "the connection to end")
    [ban] = wait_audit(proxied, "auth.ban")
    assert ban["detail"]["address"] == "192.0.2.66"
    assert closed_without_a_word(connect_from(proxied, PROXY, proxyheader.v2(("192.0.2.66", 3))))
    assert login(proxied, connect_from(proxied, PROXY, proxyheader.v2(("192.0.2.67", 4)))) is not None


def closed_without_a_word_or_banner(sock: socket.socket) -> bool:
    """Read until the server closes: only its version line (and a disconnect) may come."""
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    sock.close()
    assert received.startswith(b"SSH-2.0-sluis") or not received
    return True


def test_a_health_check_is_answered_and_leaves_no_log_line(proxied):
    before = proxied.log
    # LOCAL, v1 UNKNOWN, and a v1 header naming the proxy itself as the client (HAProxy's v1 checks)
    checks = (proxyheader.v2(None), proxyheader.v1(None), proxyheader.v1((PROXY, 5555)))
    for header in checks * 5:
        sock = connect_from(proxied, PROXY, header)
        assert sock.recv(100) == b"SSH-2.0-sluis\r\n"
        assert sock.recv(100) == b""
        sock.close()
    sock = connect_from(proxied, PROXY)   # a bare TCP connect (a check without check-send-proxy)
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(100) == b""
    sock.close()
    # a client on the proxy's own host, relayed with v2, is served (only v1 is ambiguous there)
    login(proxied, connect_from(proxied, PROXY, proxyheader.v2((PROXY, 6))))
    login(proxied, connect_from(proxied, PROXY, proxyheader.v2(("192.0.2.14", 5))))  # a line to wait for
    proxied.wait_for(r'session \S+ of "genk-clerk" from "192\.0\.2\.14:5" ended')
    new = proxied.log[len(before):].splitlines()
    assert all("192.0.2.14" in line or f'"{PROXY}:6"' in line or "sluis.audit" in line for line in new), new
    assert [r["source"] for r in audit(proxied, "auth.success")] == [f"{PROXY}:6", "192.0.2.14:5"]
    assert not audit(proxied, "protocol.error") and not audit(proxied, "auth.refused")


def test_proxy_protocol_without_trusted_proxies_is_a_configuration_error(make_server):
    srv = make_server({"server": {"proxy_protocol": True}})
    with pytest.raises(ConfigError, match=r"proxy_protocol = true needs trusted_proxies"):
        load_settings(srv.config, {})
    srv = make_server({"server": {"trusted_proxies": ["10.0.0.0/33"]}}, name="other")
    with pytest.raises(ConfigError, match=r"\[server\] trusted_proxies: expected addresses or CIDR blocks"):
        load_settings(srv.config, {})
    srv = make_server({"server": {"proxy_timeout": "0s"}}, name="third")
    with pytest.raises(ConfigError, match=r"\[server\] proxy_timeout: expected a duration from 1s to 1m"):
        load_settings(srv.config, {})


def test_trusted_proxies_match_addresses_blocks_and_ipv4_mapped_peers(lib):
    _, app, clock = lib

    async def screen(hosts: list[str]) -> list[bool]:
        inflight = InFlight()
        gate = Gatekeeper(app.defender, app.connections, app.audit, clock, inflight,
                          ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7"))
        results = [gate.screen_proxy(host, 1) for host in hosts]
        assert await inflight.settle(10) == 0
        return results

    hosts = ["10.1.2.3", "::ffff:10.1.2.3", "2001:db8::5", "192.0.2.7", "192.0.2.8", "11.0.0.1", "2001:db9::1",
             "fe80::1%eth0", "not-an-address"]
    assert asyncio.run(screen(hosts)) == [True, True, True, True, False, False, False, False, False]
    whys = {(r.detail["address"], r.detail["why"]) for r in app.audit.records() if r.event == "auth.refused"}
    assert whys == {(host, "untrusted_proxy") for host in hosts[4:]}


def test_without_proxy_protocol_a_header_is_never_believed(server):
    """The default: a PROXY header is just bad SSH, from the socket's own address."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(STRANGER, 0))
    sock.sendall(proxyheader.v2(("192.0.2.20", 1)) + b"SSH-2.0-x\r\n")
    closed_without_a_word_or_banner(sock)
    [error] = wait_audit(server, "protocol.error")
    assert error["source"].startswith(f"{STRANGER}:") and "192.0.2.20" not in server.log


def test_sockets_reading_a_header_are_capped_at_max_startups(make_server):
    srv = make_server({"server": {**SETTINGS["server"], "max_startups": 3, "proxy_timeout": "10s"},
                       "defender": {"enabled": False}}).standard().start()
    silent = [connect_from(srv, PROXY, b"\r\n\r\n") for _ in range(3)]   # a header begun, never ended
    srv.wait_for("PROXY protocol")
    started = time.monotonic()
    assert wait_until(lambda: closed_without_a_word(connect_from(srv, PROXY)), "a refusal at the cap")
    assert time.monotonic() - started < 5   # refused at once, not at proxy_timeout
    [refused] = wait_audit(srv, "auth.refused")
    assert refused["detail"] == {**refused["detail"], "address": PROXY, "why": "max_startups"}
    for sock in silent:
        sock.close()
    dropped = r"protocol error from \S+ before authentication: .connection closed inside the PROXY header"
    wait_until(lambda: len(re.findall(dropped, srv.log)) == 3, "the three to be dropped")
    login(srv, connect_from(srv, PROXY, proxyheader.v2(("192.0.2.30", 1))))   # room again

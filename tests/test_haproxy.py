"""sluis behind the real HAProxy (deploy/haproxy.cfg, tests/support/haproxy.py) on loopback:
OpenSSH sftp through it works and each node logs and audits the client's own 127.0.0.x address;
HAProxy's health checks (PROXY v2 LOCAL) keep the node UP and leave no log line; a header
forged by a client that bypasses HAProxy is refused; a rolling restart: a node drained through
the runtime API takes no new sessions, finishes its running upload, restarts and comes back.

The rolling-restart figures are printed (run with -s)."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import time

import paramiko
import pytest

from sluis.server.cli.common import operator
from sluis.server.formats.age import decrypt
from tests.support import proxyheader
from tests.support.clients_extra import audit, wait_audit
from tests.support.haproxy import HAProxy, available
from tests.support.loopback import free_port
from tests.support.server import SSH_OPTIONS, SluisServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)
CLIENT, OTHER_CLIENT = "127.0.0.7", "127.0.0.8"
BEHIND = {"server": {"proxy_protocol": True, "trusted_proxies": ["127.0.0.1"], "proxy_timeout": "2s"}}

if not available() and not os.environ.get("SLUIS_REQUIRE_CLIENTS"):
    pytest.skip("haproxy is not installed (apt-get install haproxy)", allow_module_level=True)


@pytest.fixture
def make_haproxy(tmp_path):
    made: list[HAProxy] = []

    def make(nodes: dict[str, int], options: dict[str, str] | None = None) -> HAProxy:
        proxy = HAProxy(tmp_path / "haproxy", nodes, options=options)
        made.append(proxy)
        return proxy.start()

    yield make
    for proxy in made:
        proxy.stop()


def node(make_server, name: str, port: int = 0) -> SluisServer:
    return make_server({**BEHIND, "server": {**BEHIND["server"], "listen": f"127.0.0.1:{port}"}}, name=name)


def sftp(server: SluisServer, proxy: HAProxy, user: str, script: str, source: str = CLIENT) -> str:
    """OpenSSH sftp through HAProxy from `source`."""
    result = subprocess.run(["sftp", "-b", "-", "-i", str(server.accounts[user].key), "-P", str(proxy.port),
                             *SSH_OPTIONS, "-o", f"BindAddress={source}", f"{user}@127.0.0.1"],
                            input=script, text=True, capture_output=True, timeout=60)
    assert result.returncode == 0, f"sftp failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("send", ["send-proxy-v2", "send-proxy"], ids=["v2", "v1"])
def test_sftp_through_haproxy_with_the_clients_address_and_silent_checks(make_server, make_haproxy, tmp_path, send):
    """v2 as shipped; v1 (`send-proxy`): its checks send `PROXY TCP4` naming HAProxy itself."""
    srv = node(make_server, "node1").standard().start()
    proxy = make_haproxy({"node1": srv.port}, {"send-proxy-v2": send})
    proxy.wait_up("node1")
    checks_from = time.monotonic()
    data = os.urandom(200_000)
    (tmp_path / "lijst.csv").write_bytes(data)
    sftp(srv, proxy, "agency", f"put {tmp_path / 'lijst.csv'} /genk/lijst.csv\n")
    sftp(srv, proxy, "genk-clerk", f"get lijst.csv.age {tmp_path / 'got.age'}\n", source=OTHER_CLIENT)
    out = io.BytesIO()
    decrypt(open(tmp_path / "got.age", "rb"), out, srv.passphrase("lijst.csv.age"))
    assert out.getvalue() == data
    sources = {r["actor"]: r["source"].rsplit(":", 1)[0] for r in audit(srv, "auth.success")}
    assert sources == {"agency": CLIENT, "genk-clerk": OTHER_CLIENT}
    assert re.search(rf'from="{re.escape(CLIENT)}:\d+" op=open_write', srv.log)
    # HAProxy checks every 100ms: many checks passed meanwhile (each answered, or the node would
    # be DOWN), none left a line; the proxy's own address (127.0.0.1) is in no line at all.
    wait_until(lambda: time.monotonic() - checks_from > 1.0, "ten check intervals at least")
    assert proxy.wait_up("node1")["chkfail"] == "0"
    after_start = srv.log.split("PROXY protocol: connections only from", 1)[1]
    assert not re.search(r"127\.0\.0\.1:\d+", re.sub(r'"via":"127\.0\.0\.1:\d+"', "", after_start))
    assert len(re.findall(r'"via":"127\.0\.0\.1:\d+"', after_start)) == 2   # the two logins
    assert not audit(srv, "protocol.error") and not audit(srv, "auth.refused")


def test_a_header_forged_around_haproxy_is_refused(make_server, make_haproxy):
    srv = node(make_server, "node1").standard().start()
    make_haproxy({"node1": srv.port}).wait_up("node1")
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10, source_address=(CLIENT, 0))
    sock.sendall(proxyheader.v2(("192.0.2.1", 1)) + b"SSH-2.0-OpenSSH_9.2\r\n")
    try:
        assert sock.recv(100) == b""
    except ConnectionResetError:
        pass
    sock.close()
    [refused] = wait_audit(srv, "auth.refused")
    assert refused["detail"]["address"] == CLIENT and refused["detail"]["why"] == "untrusted_proxy"
    assert "192.0.2.1" not in srv.log


def test_a_proxy_that_sends_no_header_is_dropped_and_penalised(make_server, make_haproxy):
    """HAProxy without send-proxy-v2 (its checks still send a v1 header naming itself): the
    client's own SSH bytes arrive where the header should be; dropped, the proxy penalised."""
    srv = node(make_server, "node1").standard().start()
    proxy = make_haproxy({"node1": srv.port}, {"send-proxy-v2": ""})
    proxy.wait_up("node1")
    assert "send-proxy-v2" not in proxy.config.read_text().split("default-server", 1)[1].splitlines()[0]
    result = subprocess.run(["sftp", "-b", "-", "-i", str(srv.accounts["agency"].key), "-P", str(proxy.port),
                             *SSH_OPTIONS, "-o", f"BindAddress={CLIENT}", "agency@127.0.0.1"],
                            input="ls\n", text=True, capture_output=True, timeout=60)
    assert result.returncode != 0
    [error] = wait_audit(srv, "protocol.error")
    assert error["source"].startswith("127.0.0.1:") and "not a PROXY protocol header" in error["detail"]["what"]
    assert not audit(srv, "auth.success") and CLIENT not in srv.log


def mirror(first: SluisServer, second: SluisServer) -> None:
    """The second node gets the first's tenants and users, with the same keys (with PostgreSQL
    the nodes would share them; here each node has its own SQLite)."""
    second.add_tenant("genk")
    directory = second.app().directory
    for name, role, tenant in (("agency", "sender", None), ("genk-clerk", "recipient", "genk")):
        account = first.accounts[name]
        directory.add_user(operator(), name, role=role, tenant=tenant, keys=[(account.pub.read_text(), str(account.pub))])
        second.accounts[name] = account


def test_rolling_restart_drains_a_node_and_lets_its_upload_finish(make_server, make_haproxy):
    first = node(make_server, "node1", free_port()).standard().start()
    second = node(make_server, "node2", free_port())
    mirror(first, second)
    second.start()
    proxy = make_haproxy({"node1": first.port, "node2": second.port})
    proxy.command("set server sluis/node2 state maint")
    proxy.wait_up("node1")
    # an upload running on node1 (paramiko through HAProxy)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10, source_address=(CLIENT, 0))
    transport = paramiko.Transport(sock)
    transport.connect(username="agency", pkey=paramiko.Ed25519Key.from_private_key_file(str(first.accounts["agency"].key)))
    client = paramiko.SFTPClient.from_transport(transport)
    assert client is not None
    data = os.urandom(4 << 20)
    upload = client.open("/genk/lijst.csv", "wb")
    upload.write(data[:1 << 20])
    # the restart begins: node1 drained, node2 ready
    started = time.monotonic()
    proxy.command("set server sluis/node1 state drain")
    proxy.command("set server sluis/node2 state ready")
    proxy.wait_up("node2")
    assert "genk-clerk" not in [r["actor"] for r in audit(first, "auth.success")]
    sftp(first, proxy, "genk-clerk", "ls\n", source=OTHER_CLIENT)        # a new session: on node2
    assert [r["actor"] for r in audit(second, "auth.success")] == ["genk-clerk"]
    assert [r["actor"] for r in audit(first, "auth.success")] == ["agency"]
    assert proxy.stat("node1")["scur"] == "1"                             # the upload goes on
    upload.write(data[1 << 20:])
    upload.close()
    transport.close()
    drained = wait_until(lambda: proxy.stat("node1").get("scur") == "0" and time.monotonic(), "node1 to drain")
    first.passphrase("lijst.csv.age")                                     # published whole on node1
    stopped, back = proxy.restart("node1", first)
    proxy.command("set server sluis/node2 state drain")                  # node2's turn: node1 serves
    sftp(first, proxy, "agency", "ls /genk\n")
    print(f"\nrolling restart of one node, a 4 MiB paramiko upload running: its session ended "
          f"{drained - started:.2f}s after the drain; stop {stopped - drained:.2f}s, start and UP again "
          f"(rise 2, inter 100ms) {back - stopped:.2f}s; drain to UP {back - started:.2f}s")
    assert [r["actor"] for r in audit(first, "auth.success")] == ["agency", "agency"]

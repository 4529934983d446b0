"""Two `sluis serve` nodes on one PostgreSQL database and one moto bucket, behind the real HAProxy
on loopback (deploy/haproxy.cfg), as several machines run them: each node has its own directory
holding copies of the same config and keys (host key, secret.key, audit.key, receipt key) and its
own checkpoint file; the state is in PostgreSQL, the files in the bucket, SMS through the Twilio
stand-in. A test picks the node a new session lands on by draining the other in HAProxy.

Upload through one node and collect through the other (the file opens with `age`); two uploads
for one tenant at once, one per node, leave one file waiting; a node killed (SIGKILL) mid-upload
and mid-SMS: nothing partial is visible, the survivor's janitor aborts the dead node's multipart
upload once its lease has passed while the survivor's own upload runs on untouched, and the
survivor sends every pending SMS; the client's address behind HAProxy is in each node's log and
in the audit. A rolling restart with a transfer running prints its figures (run with -s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

import paramiko
import pytest

from tests.support.clients import require_binary
from tests.support.haproxy import HAProxy, available, free_port
from tests.support.library import FAST, sluis
from tests.support.pg import raw_db
from tests.support.pty_age import run_age
from tests.support.server import SSH_OPTIONS, SluisServer
from tests.support.sms import sms_settings
from tests.support.twilio_standin import TwilioStandIn
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(240)
CLIENT, OTHER_CLIENT = "127.0.0.7", "127.0.0.8"
HASSELT = ("+32472345678", "+32473456789")
GENT = "+32471234567"          # SECOND_PHONE of the standard setup
PASSPHRASE = re.compile(r"[0-9A-Z]{4}(?:-[0-9A-Z]{4}){5}")
NODE_LEASE = 2          # seconds: a killed node's uploads are anyone's after this
WAIT = 60.0

if not available() and not os.environ.get("SLUIS_REQUIRE_CLIENTS"):
    pytest.skip("haproxy is not installed (apt-get install haproxy)", allow_module_level=True)


class Cluster:
    """The two nodes, HAProxy in front, the bucket and the SMS stand-in."""

    def __init__(self, nodes: dict[str, SluisServer], proxy: HAProxy, bucket: Any, twilio: TwilioStandIn) -> None:
        self.nodes, self.proxy, self.bucket, self.twilio = nodes, proxy, bucket, twilio

    def route(self, to: str) -> SluisServer:
        """New sessions go to node `to` from now on (the other is drained; its sessions go on)."""
        for name in self.nodes:
            self.proxy.command(f"set server sluis/{name} state {'ready' if name == to else 'drain'}")
        self.proxy.wait_up(to)
        return self.nodes[to]

    def connect(self, user: str, source: str = CLIENT) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
        """paramiko through HAProxy from `source` (any node: the accounts and keys are shared)."""
        account = self.nodes["node1"].accounts[user]
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10, source_address=(source, 0))
        transport = paramiko.Transport(sock)
        transport.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(str(account.key)))
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        return transport, client

    def sftp(self, user: str, script: str, source: str = CLIENT) -> str:
        """OpenSSH sftp through HAProxy from `source`."""
        key = self.nodes["node1"].accounts[user].key
        result = subprocess.run(["sftp", "-b", "-", "-i", str(key), "-P", str(self.proxy.port), *SSH_OPTIONS,
                                 "-o", f"BindAddress={source}", f"{user}@127.0.0.1"],
                                input=script, text=True, capture_output=True, timeout=60)
        assert result.returncode == 0, f"sftp failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def db(self) -> Any:
        return raw_db(self.nodes["node1"])

    def audit(self, event: str) -> list[dict[str, Any]]:
        with closing(self.db()) as db:
            return [{"actor": r[0], "source": r[1], "tenant": r[3], **json.loads(r[2])}
                    for r in db.execute("SELECT actor, source, detail, tenant FROM audit WHERE event = ? ORDER BY seq",
                                        (event,)).fetchall()]

    def passphrase(self, phone: str) -> str:
        """The newest passphrase texted to `phone`."""
        found = wait_until(lambda: [m.body for m in self.twilio.messages if m.to == phone],
                           f"an SMS to {phone}", WAIT)
        match = PASSPHRASE.search(found[-1])
        assert match, found[-1]
        return match.group(0)


def another_node(first: SluisServer, name: str, port: int) -> SluisServer:
    """A second machine: a copy of the first's directory (config, host key, secret.key,
    audit.key, receipt key, its own checkpoint file), listening on its own port."""
    other = SluisServer.__new__(SluisServer)
    other.__dict__.update(first.__dict__)
    other.root = first.root.parent / name
    other.data_dir = other.root / "sluis"
    shutil.copytree(first.data_dir, other.data_dir)
    other.config = other.data_dir / first.config.name
    text = other.config.read_text()
    other.config.write_text(re.sub(r'listen = "127\.0\.0\.1:\d+"', f'listen = "127.0.0.1:{port}"', text))
    other.log_path = other.root / "serve.log"
    other.env = {**first.env, "SLUIS_NODE": name}
    other.process, other.port, other._app = None, 0, None
    return other


@pytest.fixture
def cluster(make_server, pg_cluster, bucket, tmp_path) -> Iterator[Cluster]:
    require_binary("sftp")
    with TwilioStandIn(polls_to_deliver=1) as twilio:
        ports = {"node1": free_port(), "node2": free_port()}
        settings = {
            **FAST,
            "server": {"listen": f"127.0.0.1:{ports['node1']}", "proxy_protocol": True,
                       "trusted_proxies": ["127.0.0.1"], "proxy_timeout": "2s", "node_lease": f"{NODE_LEASE}s"},
            "database": {"url": pg_cluster.new_database()},
            "storage": bucket.storage_settings(part_size="5MiB"),
            "sms": sms_settings(twilio),
            "retention": {"interval": "1s"},
        }
        first = make_server(settings, env={"SLUIS_TWILIO_AUTH_TOKEN": twilio.auth_token, "SLUIS_NODE": "node1"},
                            name="node1").standard()
        first.add_tenant("hasselt", phones=HASSELT)
        first.add_user("hasselt-clerk", "recipient", "hasselt")
        first.app().receipts.ensure_key()   # every node gets the same receipt key
        second = another_node(first, "node2", ports["node2"])
        first.start()
        second.start()
        proxy = HAProxy(tmp_path / "haproxy", {"node1": first.port, "node2": second.port}).start()
        try:
            proxy.wait_up("node1")
            proxy.wait_up("node2")
            yield Cluster({"node1": first, "node2": second}, proxy, bucket, twilio)
        finally:
            proxy.stop()
            second.close()


def served(node: SluisServer, op: str, source: str) -> bool:
    return re.search(rf'from="{re.escape(source)}:\d+" op={op}', node.log) is not None


def test_upload_on_one_node_collect_on_the_other_and_one_list_waits(cluster, tmp_path):
    age = require_binary("age")
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    data = os.urandom(6 << 20)                                  # two parts of 5 MiB
    (tmp_path / "lijst.csv").write_bytes(data)
    cluster.route("node1")
    cluster.sftp("agency", f"put {tmp_path / 'lijst.csv'} /genk/lijst.csv\n")
    assert served(node1, "open_write", CLIENT) and not served(node2, "open_write", CLIENT)
    passphrase = cluster.passphrase("+32470123456")
    cluster.route("node2")
    cluster.sftp("genk-clerk", f"get lijst.csv.age {tmp_path / 'got.age'}\n", source=OTHER_CLIENT)
    assert served(node2, "open_read", OTHER_CLIENT) and not served(node1, "open_read", OTHER_CLIENT)
    run = run_age([age, "-d", str(tmp_path / "got.age")], [passphrase], timeout=60)
    assert run.returncode == 0, run.terminal
    assert run.stdout == data
    # the client's own address, not HAProxy's, in the shared audit
    sources = {r["actor"]: r["source"].rsplit(":", 1)[0] for r in cluster.audit("auth.success")}
    assert sources == {"agency": CLIENT, "genk-clerk": OTHER_CLIENT}
    assert [r["source"].rsplit(":", 1)[0] for r in cluster.audit("delivery.collect")] == [OTHER_CLIENT]

    # two uploads for one tenant at once, one on each node: one list waits
    handles = {}
    for node, name in (("node1", "a.csv"), ("node2", "b.csv")):
        cluster.route(node)
        transport, client = cluster.connect("agency")
        handle = client.open(f"/gent/{name}", "wb")
        handle.write(b"naam;adres\n" + os.urandom(200_000).hex().encode())
        handles[name] = (transport, handle)
    assert served(node1, "open_write", CLIENT) and served(node2, "open_write", CLIENT)

    def close(name: str) -> None:   # paramiko's close() swallows a failure: the state tells
        transport, handle = handles[name]
        try:
            handle.close()
        finally:
            transport.close()

    threads = [threading.Thread(target=close, args=(name,)) for name in handles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    with closing(cluster.db()) as db:
        waiting = [r[0] for r in db.execute("SELECT d.name FROM deliveries d JOIN tenants t ON t.id = d.tenant_id"
                                            " WHERE t.name = 'gent' AND d.state = 'published'").fetchall()]
    refused = [r for r in cluster.audit("upload.abort") if r["tenant"] == "gent"]
    assert len(waiting) == 1 and [r["name"] for r in refused] == [({"a.csv", "b.csv"} - set(waiting)).pop()], \
        (waiting, refused)
    assert "still has a list waiting" in refused[0]["error"], refused
    assert cluster.bucket.multipart_uploads() == []


def test_a_node_killed_mid_upload_and_mid_sms_the_other_carries_on(cluster):
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    twilio, bucket = cluster.twilio, cluster.bucket
    twilio.hold_next(1, seconds=60)
    # node1: a file for hasselt published; the first SMS is held at Twilio, the second queued
    cluster.route("node1")
    cluster.sftp("agency", f"put {small_file(node1)} /hasselt/lijst.csv\n")
    wait_until(lambda: twilio.held == 1, "an SMS accepted and its answer held", WAIT)
    # node1: an upload in progress, one part already in the bucket
    t1, c1 = cluster.connect("agency")
    cut = c1.open("/genk/cut.csv", "wb")
    cut.set_pipelined(True)
    for _ in range(6):
        cut.write(os.urandom(1 << 20))
    wait_until(bucket.uploaded_parts, "a part of node1's upload in the bucket", WAIT)
    # node2: an upload in progress too
    cluster.route("node2")
    t2, c2 = cluster.connect("agency")
    going = c2.open("/gent/going.csv", "wb")
    going.write(b"naam;adres\n" + b"x" * 100_000)
    with closing(cluster.db()) as db:
        nodes = dict(db.execute("SELECT name, node FROM uploads").fetchall())
    assert sorted(nodes.values()) == ["node1", "node2"], nodes

    assert node1.stop(signal.SIGKILL) == -signal.SIGKILL
    t1.close()
    assert bucket.objects() == [prefixed(bucket, key) for key in blob_keys(cluster)]   # nothing partial

    # node2's janitor removes node1's upload once node1's lease has passed, and aborts its multipart upload
    aborted = wait_until(lambda: [r for r in cluster.audit("upload.abort") if r.get("node") == "node1"],
                         "node1's upload removed by node2", WAIT, context=lambda: node2.log[-3000:])
    assert [r["name"] for r in aborted] == ["cut.csv"] and "lease passed" in aborted[0]["reason"]
    status = sluis(node2.config, "status", "--json", env=node2.env)
    nodes = {n["node"]: (n["live"], n["uploads"]) for n in json.loads(status.stdout)["nodes"]}
    assert nodes == {"node1": (False, 0), "node2": (True, 1)}, status.stdout + status.stderr
    wait_until(lambda: len(bucket.multipart_uploads()) == 1, "node1's multipart upload aborted", WAIT)
    going.write(b"y" * 100_000)                                   # node2's upload went on untouched
    going.close()
    t2.close()
    assert bucket.multipart_uploads() == []
    assert "going.csv" in [r["name"] for r in cluster.audit("delivery.publish")]
    assert sorted(bucket.objects()) == sorted(prefixed(bucket, key) for key in blob_keys(cluster))

    # the survivor sends every pending SMS: a duplicate only for the one in flight at the kill
    twilio.release()
    wait_until(lambda: {m.to for m in twilio.messages} >= {*HASSELT, GENT},
               "every SMS sent by node2", WAIT, context=lambda: node2.log[-3000:])
    per_phone = {phone: sum(m.to == phone for m in twilio.messages) for phone in HASSELT}
    assert sorted(per_phone.values()) in ([1, 1], [1, 2]), per_phone
    with closing(cluster.db()) as db:
        states = [r[0] for r in db.execute("SELECT state FROM outbox WHERE kind = 'sms'").fetchall()]
    assert "pending" not in states and "sending" not in states, states
    cluster.route("node2")
    listing = cluster.sftp("hasselt-clerk", "ls\n", source=OTHER_CLIENT)
    assert "lijst.csv.age" in listing


def test_rolling_restart_with_a_transfer_running(cluster):
    """Drain node1 while an upload runs on it, let it finish, restart node1, bring it back."""
    node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
    proxy = cluster.proxy
    cluster.route("node1")
    transport, client = cluster.connect("agency")                 # an upload running on node1
    upload = client.open("/genk/lijst.csv", "wb")
    upload.set_pipelined(True)
    data = os.urandom(16 << 20)
    upload.write(data[:4 << 20])
    started = time.monotonic()                                    # node1's turn: drained, node2 ready
    cluster.route("node2")
    cluster.sftp("genk-clerk", "ls\n", source=OTHER_CLIENT)       # a new session: on node2
    assert re.search(rf"{OTHER_CLIENT}:\d+", node2.log) and not re.search(rf"{OTHER_CLIENT}:\d+", node1.log)
    assert proxy.stat("node1")["scur"] == "1"                     # the upload goes on
    for offset in range(4 << 20, len(data), 4 << 20):
        upload.write(data[offset:offset + (4 << 20)])
    upload.close()
    transport.close()
    drained = wait_until(lambda: proxy.stat("node1").get("scur") == "0" and time.monotonic(), "node1 to drain")
    stopped, back = proxy.restart("node1", node1)
    assert [r["name"] for r in cluster.audit("delivery.publish")] == ["lijst.csv"]
    print(f"\nrolling restart of node1 (two nodes, PostgreSQL + S3), a 16 MiB paramiko upload running: "
          f"its session ended {drained - started:.2f}s after the drain; stop {stopped - drained:.2f}s, "
          f"start and UP again (rise 2, inter 100ms) {back - stopped:.2f}s; drain to UP {back - started:.2f}s")


def small_file(node: SluisServer) -> Path:
    path = node.root / "small.csv"
    path.write_bytes(b"naam;adres\nJanssens;Maria\n")
    return path


def blob_keys(cluster: Cluster) -> list[str]:
    with closing(cluster.db()) as db:
        return [r[0] for r in db.execute("SELECT blob_key FROM deliveries WHERE state != 'removed'").fetchall()]


def prefixed(bucket: Any, key: str) -> str:
    return bucket.prefix + key

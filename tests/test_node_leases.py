"""Nodes on one database, through the library (server/core/nodes.py): uploads belong to their
node; a start or a janitor pass removes only its own node's interrupted uploads and those of
nodes whose lease has passed, never a live node's; a name a live process holds is refused; an
upload swept while its node was out of touch does not publish. Both engines, a fake clock.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from sluis.config import load_settings
from sluis.server.app import build_app
from sluis.server.core.holders import machine
from sluis.server.core.nodes import NodeNameInUse
from sluis.server.core.session import Session
from sluis.server.errors import UploadRejected
from tests.support.library import FAST, FakeClock
from tests.support.pg import both_engines  # noqa: F401  (these tests run on both engines)

LEASE = 30


@pytest.fixture
def two_nodes(make_server):
    """(server setup, clock, app of node a, app of node b, make) on one database and data directory."""
    srv = make_server({**FAST, "server": {"node_lease": f"{LEASE}s"}}).standard()
    clock = FakeClock()
    apps = []

    def make(node: str):
        app = build_app(load_settings(srv.config, {"SLUIS_NODE": node}), clock=clock)
        apps.append(app)
        return app

    a, b = make("a"), make("b")
    a.nodes.claim(wait=False)
    b.nodes.claim(wait=False)
    yield srv, clock, a, b, make
    for app in apps:
        app.close()


def start(app, name: str):
    session = Session(user=app.directory.user("agency"), source="test")
    up = app.dropbox.start_upload(session, "genk", name)
    up.write(0, b"naam;adres\nA;B\n")
    return up


def uploads(app) -> dict[str, str]:
    return {r["id"]: r["node"] for r in app.db.query("SELECT id, node FROM uploads")}


def aborts(app) -> list[str]:
    import json
    return [json.loads(r[0])["upload"] for r in app.db.query("SELECT detail FROM audit WHERE event = 'upload.abort'")]


def test_a_pass_removes_only_the_uploads_of_a_node_whose_lease_passed(two_nodes):
    srv, clock, a, b, _make = two_nodes
    up_a, up_b = start(a, "a.csv"), start(b, "b.csv")
    assert uploads(a) == {up_a.id: "a", up_b.id: "b"}
    assert a.janitor.run_once().interrupted == 0 and b.dropbox.sweep_stale_uploads() == 0
    assert set(uploads(a)) == {up_a.id, up_b.id}              # both nodes live: nothing removed
    clock.advance(seconds=LEASE // 2)
    a.nodes.beat()                                            # a's heartbeat; b has stopped beating
    clock.advance(seconds=LEASE // 2 + 1)
    assert a.nodes.live() == ["a"]
    report = a.janitor.run_once()
    assert report.interrupted == 1 and uploads(a) == {up_a.id: "a"}
    assert aborts(a) == [up_b.id]                              # audited, once
    assert a.dropbox.publish(up_a).name == "a.csv"            # the live node's upload is untouched


def test_a_restarted_node_removes_its_own_interrupted_uploads_at_once(two_nodes):
    srv, clock, a, b, make = two_nodes
    up_a, up_b = start(a, "a.csv"), start(b, "b.csv")
    b.nodes.release()                                         # b stopped (its process ended)
    b2 = make("b")
    b2.nodes.claim(wait=False)
    assert b2.dropbox.recover() == 1                          # its own, though a's lease holds
    assert uploads(a) == {up_a.id: "a"} and aborts(a) == [up_b.id]
    a.dropbox.publish(up_a)


def test_a_name_a_live_process_holds_is_refused_and_taken_once_it_is_gone(two_nodes):
    _srv, clock, a, _b, make = two_nodes
    sleeper = subprocess.Popen(["sleep", "60"])             # another live process on this host
    try:
        with a.db.writer() as tx:
            tx.execute("UPDATE nodes SET holder = ? WHERE name = 'a'", (f"{machine()}:{sleeper.pid}:x",))
        with pytest.raises(NodeNameInUse, match=r"node name 'a' is in use .* own \[server\] node"):
            make("a").nodes.claim()    # refused at once: no waiting on this host
    finally:
        sleeper.kill()
        sleeper.wait()
    make("a").nodes.claim()            # its holder is gone: taken at once, lease or not
    with a.db.writer() as tx:           # a holder on another host: its lease is waited out
        tx.execute("UPDATE nodes SET holder = 'elsewhere:1:x' WHERE name = 'a'")
    with pytest.raises(NodeNameInUse):
        make("a").nodes.claim(wait=False)
    clock.advance(seconds=LEASE + 1)
    make("a").nodes.claim(wait=False)


def test_a_restarted_container_with_the_same_pid_takes_its_name_back(two_nodes):
    _srv, _clock, a, _b, make = two_nodes
    assert a.nodes.holder.split(":")[1] == str(os.getpid())
    make("a").nodes.claim(wait=False)  # our pid under another tag: an earlier process, gone


def test_an_upload_swept_while_its_node_was_away_does_not_publish(two_nodes):
    _srv, clock, a, b, _make = two_nodes
    up_b = start(b, "b.csv")
    clock.advance(seconds=LEASE + 1)
    a.nodes.beat()
    assert a.dropbox.sweep_stale_uploads() == 1               # b's lease passed: its upload went
    assert b.nodes.beat() is False                            # b comes back, takes its name again
    with pytest.raises((UploadRejected, OSError)):
        b.dropbox.publish(up_b)
    assert b.db.query("SELECT id FROM deliveries") == []


def test_a_heartbeat_never_takes_a_name_back_from_another_process(two_nodes):
    _srv, clock, a, _b, make = two_nodes
    clock.advance(seconds=LEASE + 1)
    other = make("a")
    other.nodes.claim(wait=False)                             # a's lease passed: another process took the name
    assert a.nodes.beat() is False and other.nodes.beat() is True
    assert a.db.query_one("SELECT holder FROM nodes WHERE name = 'a'")[0] == other.nodes.holder

"""Nodes sharing one state database: each `sluis serve` process runs as a named node holding a
liveness lease that its heartbeat renews, and each upload in progress belongs to its node.

The name (`[server] node`, default the host name) is stable across restarts on purpose: a node
that restarts after a crash recognises its own interrupted uploads and removes them at once,
without waiting for its old lease to pass. Two live processes must not share a name: `claim`
refuses a name whose lease another live process renews (on this host: a holder whose pid still
runs; elsewhere: a lease that keeps being renewed while we wait it out). Others' uploads are
removed only once their node's lease has passed (`stale`), so no node removes a live node's
uploads. SQL of the `nodes` table lives here only.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from ..errors import SluisError
from .clock import Clock, iso
from .holders import holder_gone, machine, process_name
from .store import Store

log = logging.getLogger("sluis.nodes")

WAIT_STEP = 0.25   # seconds between looks at a name's lease while waiting it out at start


class NodeNameInUse(SluisError):
    """Another live process holds this node name: each process needs its own `[server] node`."""


def default_node_name() -> str:
    """The host name: stable across restarts of the service on one machine."""
    return socket.gethostname() or "sluis"


@dataclass(frozen=True)
class NodeState:
    """One node as `sluis status` shows it."""

    name: str
    holder: str          # host:pid:tag of the process holding the name
    started_at: str
    lease_until: str
    live: bool           # its lease has not passed
    uploads: int         # its uploads in progress


class Nodes:
    """This process's node name and lease, and which nodes' leases have passed."""

    def __init__(self, db: Store, clock: Clock, *, name: str, lease: int) -> None:
        self.db = db
        self.clock = clock
        self.name = name
        self.lease = lease          # seconds a heartbeat keeps the node alive
        self.holder = process_name()
        self._lock = threading.Lock()

    @property
    def heartbeat_interval(self) -> float:
        """A third of the lease: two heartbeats may fail before others see the node as gone."""
        return max(self.lease / 3, 0.2)

    def _until(self) -> str:
        return iso(self.clock.now() + timedelta(seconds=self.lease))

    def claim(self, *, wait: bool = True) -> None:
        """At start: take this node's name. A previous holder of this host that no longer runs,
        or whose lease has passed, is replaced at once; a lease renewed by another live process
        is waited out (at most one lease and a bit) and then refused (NodeNameInUse)."""
        deadline = time.monotonic() + self.lease + 2 * self.heartbeat_interval
        first_seen: str | None = None
        while True:
            with self.db.writer() as tx:
                row = tx.execute("SELECT holder, lease_until FROM nodes WHERE name = ?", (self.name,)).fetchone()
                now = iso(self.clock.now())
                if row is None:
                    tx.execute("INSERT INTO nodes (name, holder, started_at, lease_until) VALUES (?, ?, ?, ?)",
                               (self.name, self.holder, now, self._until()))
                    return
                holder, until = row[0], row[1]
                if holder == self.holder or until <= now or holder_gone(holder, self.holder):
                    tx.execute("UPDATE nodes SET holder = ?, started_at = ?, lease_until = ? WHERE name = ?",
                               (self.holder, now, self._until(), self.name))
                    if holder != self.holder:
                        log.info("node %s: taking over from %s (no longer running)", self.name, holder)
                    return
            local = holder.rsplit(":", 2)[0] == machine()
            if not wait or local or (first_seen is not None and until != first_seen) \
                    or time.monotonic() > deadline:
                raise NodeNameInUse(
                    f"node name {self.name!r} is in use by another running sluis process ({holder}); "
                    "give each process its own [server] node")
            first_seen = first_seen or until
            time.sleep(WAIT_STEP)

    def beat(self) -> bool:
        """Renew the lease (the heartbeat, in a thread). False when it had passed (we stalled for
        longer than the lease: it is taken back, and the uploads other nodes removed meanwhile
        fail at their close, DropBox.publish) or another process has taken the name since."""
        with self._lock, self.db.writer() as tx:
            now = iso(self.clock.now())
            row = tx.execute("SELECT holder, lease_until FROM nodes WHERE name = ?", (self.name,)).fetchone()
            if row is not None and row[0] == self.holder and row[1] > now:
                tx.execute("UPDATE nodes SET lease_until = ? WHERE name = ?", (self._until(), self.name))
                return True
            if row is not None and row[0] != self.holder:
                log.error("node %s: another process (%s) has taken this node's name; give each process "
                          "its own [server] node", self.name, row[0])
                return False
            tx.execute("INSERT INTO nodes (name, holder, started_at, lease_until) VALUES (?, ?, ?, ?)"
                       " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                       " started_at = excluded.started_at, lease_until = excluded.lease_until",
                       (self.name, self.holder, now, self._until()))
        log.error("node %s: its lease had passed (stalled for longer than [server] node_lease); "
                  "uploads in progress here may have been removed by another node", self.name)
        return False

    def release(self) -> None:
        """At a clean stop (after every session has ended): give the name up."""
        with self.db.writer() as tx:
            tx.execute("DELETE FROM nodes WHERE name = ? AND holder = ?", (self.name, self.holder))

    def live(self) -> list[str]:
        """Names of the nodes whose lease has not passed (this one included, once claimed)."""
        return [r[0] for r in self.db.query("SELECT name FROM nodes WHERE lease_until > ? ORDER BY name",
                                            (iso(self.clock.now()),))]

    def states(self) -> list[NodeState]:
        """Every node with a lease row, live or not, and its uploads in progress."""
        now = iso(self.clock.now())
        counts = {r[0]: r[1] for r in self.db.query("SELECT node, COUNT(*) FROM uploads GROUP BY node")}
        return [NodeState(r["name"], r["holder"], r["started_at"], r["lease_until"], r["lease_until"] > now,
                          counts.get(r["name"], 0))
                for r in self.db.query("SELECT name, holder, started_at, lease_until FROM nodes ORDER BY name")]

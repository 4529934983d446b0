"""`sluis serve`: the SFTP listener, the outbox worker and the janitor in one process.

SIGTERM/SIGINT stop it cleanly: the listener closes, open connections are closed, and it waits
(at most SHUTDOWN_GRACE_SECONDS in all) until every connection has ended and every SFTP
session has cleaned up (uploads in flight aborted and audited through the normal abort path,
downloads closed and audited) and every background audit write is done (app.inflight); then the
workers stop, a last signed checkpoint of the audit chain is written, and the database closes
(after asyncio.Runner has waited for the worker threads of cancelled passes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Callable

import asyncssh

from ..keydelivery.factory import make_provider
from ..keydelivery.notifier import NotificationSender
from ..keydelivery.worker import OutboxWorker, mail_server
from .app import App
from .sftp import algorithms
from .core.checkpoints import INTERVAL, SHUTDOWN, START
from .core.session import Session
from .sftp.auth import SluisSSHServer
from .sftp.gate import EVENT_TERMINATED
from .sftp import fastpath
from .sftp.listener import ProxyGate, listen
from .sftp.limits import raise_descriptor_limit

log = logging.getLogger("sluis")
# SIGTERM waits at most this long, in all, for connections to end and sessions to clean up before
# the workers stop and the database closes; what is still running then is logged, and the next
# start removes what an unfinished upload left. Well below systemd's TimeoutStopSec=30.
SHUTDOWN_GRACE_SECONDS = 10.0
HOST_KEY_CREDENTIAL = "sluis-host-key"
WATCH_INTERVAL_SECONDS = 2.0   # disabled accounts' sessions end, and lifted bans take effect, within this


def host_key_paths(app: App) -> list[Path]:
    """The configured host keys, or the systemd credential when one is passed."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / HOST_KEY_CREDENTIAL).is_file():
        return [Path(creds) / HOST_KEY_CREDENTIAL]
    return [app.settings.resolve(p) for p in app.settings.server.host_keys]


def announce_receipt_key(app: App) -> None:
    """Load the receipt key before serving; an upgraded setup gets one now (audited, logged)."""
    loaded = app.receipts.ensure_key()
    if loaded.created:
        log.warning("created the receipt signing key %s (%s): copy it to every other node and publish "
                    "`sluis receipt allowed-signers` to whoever verifies receipts", loaded.origin,
                    loaded.fingerprint)


def proxy_gate(app: App) -> ProxyGate | None:
    """With [server] proxy_protocol: connections come from trusted_proxies, each with a header."""
    server = app.settings.server
    if not server.proxy_protocol:
        return None
    return ProxyGate(screen_peer=app.gate.screen_proxy, failed=app.gate.proxy_failed, full=app.gate.proxy_full,
                     timeout=server.proxy_timeout, max_pending=server.max_startups)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (`pip install sluis[fast]`), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """`uvloop 0.23.0` or `asyncio` (the standard loop): logged at start."""
    module = type(loop).__module__.split(".")[0]
    if module == "uvloop":
        import uvloop
        return f"uvloop {uvloop.__version__}"
    return "asyncio"


class Service:
    def __init__(self, app: App) -> None:
        self.app = app
        self.stopping = asyncio.Event()
        # A cancelled task's thread runs on: the shutdown checkpoint waits for it, and comes last.
        self._checkpointing = threading.Lock()
        self.port = 0

    async def run(self, on_ready: Callable[[int], None] | None = None) -> None:
        app, loop = self.app, asyncio.get_running_loop()
        short = raise_descriptor_limit(app.settings)
        if short:
            log.warning("%s", short)
        await asyncio.to_thread(app.outbox.sealer)  # fail now, not at the first upload, if the key is unusable
        await asyncio.to_thread(announce_receipt_key, app)
        await asyncio.to_thread(app.nodes.claim)   # before recovery: this node's name is ours now
        recovered = await asyncio.to_thread(app.dropbox.recover)
        if recovered:
            log.warning("removed %d leftovers of uploads interrupted by the last stop", recovered)
        worker = OutboxWorker(app.settings, app.outbox, make_provider(app.settings.sms))
        app.outbox.on_wake(lambda: worker.wake_threadsafe(loop))
        host, port = app.settings.server.listen
        keys = await asyncio.to_thread(lambda: [asyncssh.read_private_key(str(p)) for p in host_key_paths(app)])
        await asyncio.to_thread(app.defender.load)   # bans from before a restart hold at once
        acceptor = await listen(
            host, port, app.gate.screen, proxy=proxy_gate(app),
            server_factory=lambda: SluisSSHServer(app, app.gate, app.passwords),
            server_host_keys=algorithms.host_keypairs(keys), server_version="sluis",
            **algorithms.server_options(),
            allow_scp=False, agent_forwarding=False, x11_forwarding=False, allow_pty=False,
            login_timeout=app.settings.server.login_timeout, keepalive_interval=60,
            # No terminal sessions, so no line editor: asyncssh would wrap every channel in one
            # whose every write and attribute lookup goes through a forwarding layer.
            line_editor=False, window=app.settings.limits.channel_window)
        self.port = acceptor.sockets[0].getsockname()[1]
        sender = NotificationSender(app.settings, app.notifications, make_provider(app.settings.sms),
                                    mail_server(app.settings))
        tasks = [asyncio.create_task(worker.run(), name="outbox"),
                 asyncio.create_task(self._janitor_loop(), name="janitor"),
                 asyncio.create_task(self._incidents_loop(sender), name="incidents"),
                 asyncio.create_task(self._checkpoint_loop(), name="checkpoints"),
                 asyncio.create_task(self._watch_loop(), name="watch"),
                 asyncio.create_task(self._heartbeat_loop(), name="heartbeat")]
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        log.info("sluis listening on %s:%d as node %s (sms provider: %s; event loop: %s; transport fast path: %s)",
                 host, self.port, app.nodes.name, app.settings.sms.provider, loop_name(loop),
                 ",".join(sorted(fastpath.installed())) or "off")
        if app.settings.server.proxy_protocol:
            log.info("PROXY protocol: connections only from %s, each starting with a PROXY header",
                     ", ".join(app.settings.server.trusted_proxies))
        if app.settings.sms.provider == "console":
            log.warning("SMS provider \"console\" writes every passphrase to this log: for a demo only; "
                        "set provider = \"twilio\" under sms in the configuration before real lists are sent")
        if on_ready:
            on_ready(self.port)
        await self.stopping.wait()
        deadline = loop.time() + SHUTDOWN_GRACE_SECONDS
        await self._close_connections(acceptor, deadline)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._finish_passes(deadline)
        # Give the node's name up: what a session could not clean up is now anyone's to sweep.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sluis-shutdown") as last:
            await loop.run_in_executor(last, self._release_node)
        # The last records of this run are written by now: the shutdown checkpoint covers them.
        # (The default executor is shut down, so it gets a thread of its own.)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sluis-shutdown") as last:
            await loop.run_in_executor(last, self._checkpoint, SHUTDOWN)
        log.info("stopped")

    async def _close_connections(self, acceptor: asyncio.Server, deadline: float) -> None:
        """Stop accepting, end every connection, and wait (until `deadline`) for each session's
        cleanup and every tracked write: nothing of a session is still writing when the database closes."""
        app, loop = self.app, asyncio.get_running_loop()
        live = app.connections.live
        log.info("stopping: closing the listener and %d connections", len(live))
        acceptor.close()
        for server in live:
            server.terminate("server shutting down")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(acceptor.wait_closed(), max(deadline - loop.time(), 0.0))
        left = await app.inflight.settle(max(deadline - loop.time(), 0.0))
        if left:
            log.warning("stopping: %d connections, session cleanups or audit writes still running after %.0f s; "
                        "stopping anyway (the next start removes what unfinished uploads left)",
                        left, SHUTDOWN_GRACE_SECONDS)
        else:
            log.info("stopping: every connection ended and every session cleaned up")

    async def _finish_passes(self, deadline: float) -> None:
        """Wait (until `deadline`) for the threads of the passes just cancelled: a cancelled
        `to_thread` runs on to its end (an outbox pass mid-SMS, a janitor pass), and what it records
        must come before the shutdown checkpoint and the closing of the database."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(asyncio.shield(loop.shutdown_default_executor()),
                                   max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            log.warning("stopping: a worker pass is still running after %.0f s; stopping anyway "
                        "(what it records comes after the shutdown checkpoint)", SHUTDOWN_GRACE_SECONDS)

    async def _janitor_loop(self) -> None:
        while True:
            for name, task in (("janitor", self.app.janitor.run_once), ("monitor", self.app.monitor.run_once)):
                try:
                    await asyncio.to_thread(task)
                except Exception:
                    log.exception("%s pass failed", name)
            await asyncio.sleep(max(self.app.settings.retention.interval, 1))

    def _release_node(self) -> None:
        try:
            self.app.nodes.release()
        except Exception:
            log.exception("could not give up the node's lease (it passes by itself)")

    async def _heartbeat_loop(self) -> None:
        """Renew this node's lease every third of [server] node_lease (in a thread: the database)."""
        nodes = self.app.nodes
        while True:
            await asyncio.sleep(nodes.heartbeat_interval)
            try:
                await asyncio.to_thread(nodes.beat)
            except Exception:
                log.exception("node heartbeat failed")

    async def _incidents_loop(self, sender: NotificationSender) -> None:
        """New audit records become incidents, then queued alerts and DPO notices go out (threads)."""
        while True:
            for name, task in (("incidents", self.app.tracker.run_once), ("notifications", sender.run_once)):
                try:
                    await asyncio.to_thread(task)
                except Exception:
                    log.exception("%s pass failed", name)
            await asyncio.sleep(max(self.app.settings.incidents.interval, 1))

    async def _checkpoint_loop(self) -> None:
        """A signed checkpoint at start and every [audit] checkpoint_interval; the daily mail goes
        with an interval checkpoint (a service that keeps restarting does not mail each time)."""
        await asyncio.to_thread(self._checkpoint, START)
        while True:
            await asyncio.sleep(max(self.app.settings.audit.checkpoint_interval, 1))
            await asyncio.to_thread(self._checkpoint, INTERVAL, True)

    def _checkpoint(self, reason: str, mail: bool = False) -> None:
        """One checkpoint (in a thread: it reads the chain, fsyncs and may send mail)."""
        with self._checkpointing:
            try:
                checkpoint = self.app.checkpoints.checkpoint(reason)
                if checkpoint is not None and mail:
                    self.app.checkpoints.mail_if_due(checkpoint)
            except Exception:
                log.exception("audit checkpoint failed")

    async def _watch_loop(self) -> None:
        """Every few seconds, off the loop: end the sessions of users disabled meanwhile (by
        `sluis user disable` / `tenant disable` in another process), and reload the bans (so
        `sluis bans lift` takes effect)."""
        app = self.app
        while True:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
            try:
                users = app.connections.users()
                barred = await asyncio.to_thread(app.directory.barred_among, users) if users else set()
                for server in app.connections.sessions_of(barred):
                    await self._terminate(server, "account disabled")
                await asyncio.to_thread(app.defender.load)
            except Exception:
                log.exception("watch pass failed")

    async def _terminate(self, server: SluisSSHServer, reason: str) -> None:
        session = server.session
        if session is not None:
            log.warning("ending session %s of %s from %s: %s", session.id, session.actor, server.source, reason)
            try:
                await asyncio.to_thread(self._record_termination, server.source, session, reason)
            except Exception:
                log.exception("could not record the end of session %s", session.id)
        server.terminate(reason)

    def _record_termination(self, source: str, session: Session, reason: str) -> None:
        user = session.user
        tenant = self.app.directory.tenant_label(user.tenant_id)
        self.app.audit.record(EVENT_TERMINATED, actor=user.name, tenant=tenant, source=source,
                              session=session.id, reason=reason)

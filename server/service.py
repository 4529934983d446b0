"""`sluis serve`: the SFTP listener, the outbox worker and the janitor in one process.

SIGTERM/SIGINT stop it cleanly: the listener closes, open connections are closed (uploads in
flight are discarded through the normal abort path), workers stop, the database is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Callable

import asyncssh

from ..keydelivery.factory import make_provider
from ..keydelivery.notifier import NotificationSender
from ..keydelivery.worker import OutboxWorker, mail_server
from .app import App
from .sftp import algorithms
from .sftp.auth import SluisSSHServer

log = logging.getLogger("sluis")
SHUTDOWN_GRACE_SECONDS = 5.0
HOST_KEY_CREDENTIAL = "sluis-host-key"


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


class Service:
    def __init__(self, app: App) -> None:
        self.app = app
        self.stopping = asyncio.Event()
        self.port = 0

    async def run(self, on_ready: Callable[[int], None] | None = None) -> None:
        app, loop = self.app, asyncio.get_running_loop()
        await asyncio.to_thread(app.outbox.sealer)  # fail now, not at the first upload, if the key is unusable
        await asyncio.to_thread(announce_receipt_key, app)
        recovered = await asyncio.to_thread(app.dropbox.recover)
        if recovered:
            log.warning("removed %d leftovers of uploads interrupted by the last stop", recovered)
        worker = OutboxWorker(app.settings, app.outbox, make_provider(app.settings.sms))
        app.outbox.on_wake(lambda: worker.wake_threadsafe(loop))
        host, port = app.settings.server.listen
        keys = await asyncio.to_thread(lambda: [asyncssh.read_private_key(str(p)) for p in host_key_paths(app)])
        acceptor = await asyncssh.create_server(
            lambda: SluisSSHServer(app), host, port, server_host_keys=algorithms.host_keypairs(keys),
            server_version="sluis", **algorithms.server_options(),
            allow_scp=False, agent_forwarding=False, x11_forwarding=False, allow_pty=False,
            login_timeout=app.settings.server.login_timeout, keepalive_interval=60)
        self.port = acceptor.sockets[0].getsockname()[1]
        sender = NotificationSender(app.settings, app.notifications, make_provider(app.settings.sms),
                                    mail_server(app.settings))
        tasks = [asyncio.create_task(worker.run(), name="outbox"),
                 asyncio.create_task(self._janitor_loop(), name="janitor"),
                 asyncio.create_task(self._incidents_loop(sender), name="incidents")]
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        log.info("sluis listening on %s:%d (sms provider: %s)", host, self.port, app.settings.sms.provider)
        if on_ready:
            on_ready(self.port)
        await self.stopping.wait()
        log.info("stopping: closing the listener and %d connections", len(app.connections.live))
        acceptor.close()
        for server in list(app.connections.live):
            if server.conn is not None:
                server.conn.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(acceptor.wait_closed(), SHUTDOWN_GRACE_SECONDS)
        await asyncio.sleep(0.2)  # let the SFTP sessions run their cleanup (abort open uploads)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("stopped")

    async def _janitor_loop(self) -> None:
        while True:
            for name, task in (("janitor", self.app.janitor.run_once), ("monitor", self.app.monitor.run_once)):
                try:
                    await asyncio.to_thread(task)
                except Exception:
                    log.exception("%s pass failed", name)
            await asyncio.sleep(max(self.app.settings.retention.interval, 1))

    async def _incidents_loop(self, sender: NotificationSender) -> None:
        """New audit records become incidents, then queued alerts and DPO notices go out (threads)."""
        while True:
            for name, task in (("incidents", self.app.tracker.run_once), ("notifications", sender.run_once)):
                try:
                    await asyncio.to_thread(task)
                except Exception:
                    log.exception("%s pass failed", name)
            await asyncio.sleep(max(self.app.settings.incidents.interval, 1))

"""The composition root: builds every part from Settings, explicitly, once per process."""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import Any

from ..config.settings import Settings
from ..keydelivery.outbox import Outbox
from ..keydelivery.passphrase import new_passphrase
from ..keydelivery.sealing import load_sealer
from ..retention.incidents import IncidentTracker
from ..retention.janitor import Janitor
from ..retention.monitor import AccessMonitor
from ..retention.policy import YearlyPolicy
from .core.audit import AuditLog
from .core.clock import Clock, SystemClock
from .core.directory import Directory
from .core.dropbox import DropBox
from .core.incidents import IncidentStore
from .core.evidence import EvidenceStore
from .core.notifications import NotificationQueue
from .core.receiptkey import load_or_create
from .core.receipts import ReceiptStore
from .core.review import AccountReview
from .core.state import Database, open_database
from .core.storage import LocalStorage, Storage


class ConnectionLimit:
    """The open connections, held to [server] max_connections; shutdown closes them all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.live: set[Any] = set()
        self._lock = threading.Lock()

    def admit(self, connection: Any) -> bool:
        with self._lock:
            if len(self.live) >= self.limit:
                return False
            self.live.add(connection)
            return True

    def release(self, connection: Any) -> None:
        with self._lock:
            self.live.discard(connection)


@dataclass
class App:
    settings: Settings
    clock: Clock
    db: Database
    audit: AuditLog
    directory: Directory
    storage: Storage
    policy: YearlyPolicy
    outbox: Outbox
    dropbox: DropBox
    janitor: Janitor
    monitor: AccessMonitor
    connections: ConnectionLimit
    incidents: IncidentStore
    notifications: NotificationQueue
    tracker: IncidentTracker
    review: AccountReview
    receipts: ReceiptStore
    evidence: EvidenceStore

    def close(self) -> None:
        self.db.close()


def build_app(settings: Settings, *, clock: Clock | None = None, storage: Storage | None = None) -> App:
    clock = clock or SystemClock()
    if not settings.data_dir.is_dir():
        raise FileNotFoundError(f"data directory {settings.data_dir} does not exist (run 'sluis init')")
    db = open_database(settings.database_path)
    audit = AuditLog(db, clock)
    directory = Directory(db, audit, clock)
    storage = storage or LocalStorage(settings.data_dir)
    policy = YearlyPolicy(settings.policy, clock)
    sealer = functools.cache(lambda: load_sealer(settings.resolve(settings.crypto.secret_key_file),
                                                 os.environ.get("CREDENTIALS_DIRECTORY")))
    outbox = Outbox(settings, db, audit, clock, sealer)
    notifications = NotificationQueue(db, audit, clock)
    receipt_key = functools.cache(lambda: load_or_create(settings.resolve(settings.crypto.secret_key_file),
                                                         os.environ.get("CREDENTIALS_DIRECTORY")))
    receipts = ReceiptStore(db, audit, clock, receipt_key, notifications, settings.email.enabled)
    dropbox = DropBox(settings=settings, db=db, audit=audit, directory=directory, storage=storage,
                      clock=clock, keys=outbox, policy=policy, passphrases=new_passphrase, receipts=receipts)
    janitor = Janitor(settings, dropbox, outbox, clock)
    incidents = IncidentStore(db, audit, clock)
    return App(settings=settings, clock=clock, db=db, audit=audit, directory=directory, storage=storage,
               policy=policy, outbox=outbox, dropbox=dropbox, janitor=janitor,
               monitor=AccessMonitor(settings, audit, clock),
               connections=ConnectionLimit(settings.server.max_connections),
               incidents=incidents, notifications=notifications,
               tracker=IncidentTracker(settings, incidents, notifications, clock),
               review=AccountReview(db, clock), receipts=receipts,
               evidence=EvidenceStore(db))

"""The composition root: builds every part from Settings, explicitly, once per process."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from ..config.settings import Settings, StorageBackend
from ..keydelivery.mail import send_mail
from ..keydelivery.outbox import Outbox
from ..keydelivery.passphrase import new_passphrase
from ..keydelivery.sealing import load_sealer
from ..keydelivery.worker import mail_server
from ..retention.incidents import IncidentTracker
from ..retention.janitor import Janitor
from ..retention.monitor import AccessMonitor
from ..retention.policy import YearlyPolicy
from .core.nodes import Nodes, default_node_name
from .core.audit import AuditLog, open_audit_log
from .core.checkpoints import CheckpointFile, Checkpointer, Mailer
from .core.bans import BanStore
from .core.clock import Clock, SystemClock
from .core.contentgate import ContentGate
from .core.defender import Defender
from .core.directory import Directory
from .core.dropbox import DropBox
from .core.incidents import IncidentStore
from .core.evidence import EvidenceStore
from .core.notifications import NotificationQueue
from .core.protocols import ProtocolRegister
from .core.receiptkey import load_or_create
from .core.receipts import ReceiptStore
from .core.review import AccountReview
from .core.store import Store
from .core.stores import MIGRATE_EVENT, open_store
from .core.storage import LocalStorage, Storage
from .core.workpool import BoundedPool
from . import memory
from .sftp.connections import ConnectionRegistry
from .sftp.gate import Gatekeeper
from .sftp.inflight import InFlight
from .sftp.limits import ProcessLimits


@dataclass
class App:
    settings: Settings
    clock: Clock
    db: Store
    audit: AuditLog
    directory: Directory
    storage: Storage
    policy: YearlyPolicy
    protocols: ProtocolRegister
    outbox: Outbox
    dropbox: DropBox
    janitor: Janitor
    monitor: AccessMonitor
    checkpoints: Checkpointer
    connections: ConnectionRegistry
    defender: Defender
    gate: Gatekeeper
    passwords: BoundedPool    # argon2id checks, apart from the default pool key logins use
    incidents: IncidentStore
    notifications: NotificationQueue
    tracker: IncidentTracker
    review: AccountReview
    limits: ProcessLimits
    receipts: ReceiptStore
    evidence: EvidenceStore
    inflight: InFlight        # connections, session cleanups, background writes: shutdown waits for them
    nodes: Nodes              # this process's node name and liveness lease (several nodes on one database)
    migrated: list[str] = field(default_factory=list)   # the migrations this process applied at start

    def close(self) -> None:
        self.passwords.shutdown()
        self.db.close()


def open_storage(settings: Settings) -> Storage:
    """[storage] backend: files under data_dir/boxes, or objects in an S3-compatible bucket."""
    if settings.storage.backend == StorageBackend.S3:
        from .core.s3storage import S3Storage   # boto3 is imported only when it is used
        return S3Storage(settings.storage, max_readers=settings.limits.store_readers)
    return LocalStorage(settings.data_dir)


def build_app(settings: Settings, *, clock: Clock | None = None, storage: Storage | None = None) -> App:
    clock = clock or SystemClock()
    if not settings.data_dir.is_dir():
        raise FileNotFoundError(f"data directory {settings.data_dir} does not exist (run 'sluis init')")
    db = open_store(settings.database, settings.database_path, migrate=False)
    applied = db.migrate()   # under the engine's lock: processes starting at once migrate once
    audit, audit_key = open_audit_log(db, clock, settings.resolve(settings.crypto.audit_key_file),
                                      os.environ.get("CREDENTIALS_DIRECTORY"))
    if applied:
        version = db.version()
        audit.record(MIGRATE_EVENT, actor="sluis", version_from=version - len(applied), version_to=version,
                     applied=applied)
    checkpoints = Checkpointer(audit, audit_key, clock,
                               CheckpointFile(settings.resolve(settings.audit.checkpoint_file)),
                               _checkpoint_mailer(settings), lock=db.try_lock)
    directory = Directory(db, audit, clock)
    storage = storage or open_storage(settings)
    policy = YearlyPolicy(settings.policy, clock)
    sealer = functools.cache(lambda: load_sealer(settings.resolve(settings.crypto.secret_key_file),
                                                 os.environ.get("CREDENTIALS_DIRECTORY")))
    outbox = Outbox(settings, db, audit, clock, sealer)
    notifications = NotificationQueue(db, audit, clock)
    receipt_key = functools.cache(lambda: load_or_create(settings.resolve(settings.crypto.secret_key_file),
                                                         os.environ.get("CREDENTIALS_DIRECTORY")))
    receipts = ReceiptStore(db, audit, clock, receipt_key, notifications, settings.email.enabled)
    nodes = Nodes(db, clock, name=settings.server.node or default_node_name(), lease=settings.server.node_lease)
    dropbox = DropBox(settings=settings, db=db, audit=audit, directory=directory, storage=storage,
                      clock=clock, keys=outbox, policy=policy, passphrases=new_passphrase,
                      content=ContentGate(settings.policy, directory, audit), receipts=receipts,
                      node=nodes.name, after_transfer=memory.release)
    janitor = Janitor(settings, db, dropbox, outbox, directory, audit, clock)
    incidents = IncidentStore(db, audit, clock)
    connections = ConnectionRegistry(settings.server)
    defender = Defender(settings.defender, BanStore(db, audit), clock)
    inflight = InFlight()
    return App(settings=settings, clock=clock, db=db, audit=audit, directory=directory, storage=storage,
               policy=policy, protocols=ProtocolRegister(db, audit, clock), outbox=outbox, dropbox=dropbox, janitor=janitor,
               monitor=AccessMonitor(settings, audit, clock, db.try_lock), checkpoints=checkpoints,
               connections=connections, defender=defender,
               gate=Gatekeeper(defender, connections, audit, clock, inflight, settings.server.trusted_proxies),
               passwords=BoundedPool("password", settings.server.password_threads, settings.server.password_queue),
               incidents=incidents, notifications=notifications,
               tracker=IncidentTracker(settings, incidents, notifications, clock),
               review=AccountReview(db, clock),
               limits=ProcessLimits(settings.limits, audit, directory, inflight),
               receipts=receipts, evidence=EvidenceStore(db), inflight=inflight, nodes=nodes,
               migrated=applied)


def _checkpoint_mailer(settings: Settings) -> Mailer | None:
    """Mails checkpoints to [email] operator when mail, an operator and [audit] mail are on."""
    server = mail_server(settings)
    if server is None or not settings.email.operator or not settings.audit.mail:
        return None
    return lambda subject, body: send_mail(server, to=[settings.email.operator], subject=subject, body=body)

"""The drop-box core: uploads become deliveries, recipients read and collect them, and every
removal goes through one path. It knows nothing of SFTP; the edge calls it off the event loop.
"""

from __future__ import annotations

import logging
import secrets
import threading
from datetime import datetime, timedelta
from typing import Any, Callable
from weakref import WeakValueDictionary

from ...config.settings import Settings
from ..errors import NotFound, PermissionDenied, PolicyRefused, UploadRejected
from .audit import AuditLog
from .clock import Clock, iso
from .contentgate import ContentGate
from .coverage import Coverage
from .deliveries import (
    COLLECTED, PUBLISHED, REASON_COLLECTED, REASON_REPLACED, REMOVED, VISIBLE, fetch, insert,
)
from .directory import Directory
from .download import Download
from .encryption import SUFFIXES, HashingOutput, open_encryptor
from .names import check_name, staged_base
from .pipeline import AtRestWorkers
from .ports import DeliveryPolicy, KeyHandoff, ReceiptIssuer
from .records import Delivery, Tenant
from .session import Session
from .store import Store, Tx
from .storage import Storage
from .uploads import Upload
from .window import MemoryBudget, ReorderWindow

log = logging.getLogger("sluis.dropbox")


class DropBox:
    """Uploads, downloads, collection and removal of deliveries."""

    def __init__(self, *, settings: Settings, db: Store, audit: AuditLog, directory: Directory,
                 storage: Storage, clock: Clock, keys: KeyHandoff, policy: DeliveryPolicy,
                 passphrases: Callable[[], str], content: ContentGate, receipts: ReceiptIssuer,
                 node: str = "", after_transfer: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.node = node            # this process's node: its uploads carry it (server/core/nodes.py)
        self.db = db
        self.audit = audit
        self.directory = directory
        self.storage = storage
        self.clock = clock
        self.keys = keys
        self.policy = policy
        self.passphrases = passphrases
        self.content = content
        self.receipts = receipts
        self.after_transfer = after_transfer   # an upload or download ended (server/memory.py)
        self.budget = MemoryBudget(settings.upload.total_window)
        self.atrest = AtRestWorkers(settings.upload.atrest_memory)  # hashing + encryption threads
        # Each sender's share of it, alive while one of its uploads holds it.
        self._sender_budgets: WeakValueDictionary[int, MemoryBudget] = WeakValueDictionary()
        self._budgets_lock = threading.Lock()
        self.revoked: set[str] = set()  # deliveries this process removed: open handles read no more
        self._unreferenced: dict[str, datetime] = {}  # blob key -> first sweep that found it orphaned

    # --- what users see ----------------------------------------------------------------------
    def active_tenant(self, name: str) -> Tenant:
        tenant = self.directory.tenant(name)
        if not tenant.active:
            raise NotFound(f"no tenant named {name!r}")
        return tenant

    def sender_pending(self, session: Session, tenant: Tenant) -> list[Delivery]:
        """The sender's own deliveries to this tenant that nobody has collected yet."""
        return fetch(self.db, "tenant_id = ? AND sender_id = ? AND state = ?",
                     (tenant.id, session.user.id, PUBLISHED))

    def recipient_files(self, session: Session) -> list[Delivery]:
        return fetch(self.db, "tenant_id = ? AND state IN (?, ?)", (session.user.tenant_id, *VISIBLE))

    def recipient_file(self, session: Session, stored_name: str) -> Delivery:
        for delivery in self.recipient_files(session):
            if delivery.stored_name == stored_name:
                return delivery
        raise NotFound(f"no file named {stored_name!r}")

    def sender_file(self, session: Session, tenant: Tenant, name: str) -> Delivery:
        for delivery in self.sender_pending(session, tenant):
            if delivery.name == name:
                return delivery
        raise NotFound(f"no file named {name!r}")

    def sender_receipts(self, session: Session) -> list[Any]:
        """The signed receipts of the sender's own deliveries (newest first)."""
        return self.receipts.for_sender(session.user.id) if session.is_sender else []

    def sender_receipt(self, session: Session, delivery_id: str) -> Any:
        receipt = self.receipts.of_sender(session.user.id, delivery_id) if session.is_sender else None
        if receipt is None:
            raise NotFound(f"no receipt for {delivery_id!r}")
        return receipt

    # --- uploads -------------------------------------------------------------------------------
    def start_upload(self, session: Session, tenant_name: str, name: str) -> Upload:
        """Check name, tenant and policy, then open the temporary (blocks: SQLite, disk). The key
        derivation is not done here: `Upload.begin` starts it in the at-rest worker."""
        if not session.is_sender:
            raise PermissionDenied("only senders upload")
        name = check_name(name)
        tenant = self.active_tenant(tenant_name)
        try:  # refuse early, with the policy's message; publish asks again, race-free
            self.policy.admit(self.db, tenant, name=staged_base(name) or name)
        except PolicyRefused as refusal:
            self.audit.record("upload.refused", actor=session.actor, tenant=tenant.name,
                              source=session.source, name=name, policy="delivery", error=str(refusal))
            raise
        check = self.content.admit(session, tenant, name)   # [policy] name_check and content
        upload_id = "u-" + secrets.token_hex(8)
        with self.db.writer() as tx:
            tx.execute("INSERT INTO uploads (id, tenant_id, sender_id, name, temp_key, source, started_at, node)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (upload_id, tenant.id, session.user.id, name,
                                                            upload_id, session.source, iso(self.clock.now()),
                                                            self.node))
            self.audit.append(tx, "upload.start", actor=session.actor, tenant=tenant.name,
                              source=session.source, upload=upload_id, name=name)
        try:   # the blob's final key is chosen now (S3: the multipart upload is created for it)
            temp = self.storage.create_temp(upload_id, f"{tenant.box_key}/{upload_id}")
        except BaseException:
            self._forget_upload(upload_id, tenant, session, "failed to start", "storage")
            raise
        try:
            out = HashingOutput(temp)
            passphrase = self.passphrases()
        except BaseException:
            temp.close()
            self._forget_upload(upload_id, tenant, session, "failed to start", "encryptor")
            raise
        member = staged_base(name) or name
        log_n = self.settings.crypto.scrypt_log_n
        upload_settings = self.settings.upload
        budget = self._sender_budget(session)
        # The key derivation (scrypt) runs later, in the upload's at-rest worker (Upload.begin).
        return Upload(upload_id=upload_id, session=session, tenant=tenant, name=name, temp=temp,
                      out=out, passphrase=passphrase, workers=self.atrest, check=check,
                      encryptor=lambda: open_encryptor(tenant.format, out, passphrase, name=member,
                                                       scrypt_log_n=log_n),
                      window_factory=lambda sink: ReorderWindow(
                          sink, window=upload_settings.window, budget=budget,
                          max_size=upload_settings.max_file_size))

    def _sender_budget(self, session: Session) -> MemoryBudget:
        with self._budgets_lock:
            budget = self._sender_budgets.get(session.user.id)
            if budget is None:
                limit = self.settings.upload.sender_window
                budget = MemoryBudget(limit, self.budget, limit_name="sender_window")
                self._sender_budgets[session.user.id] = budget
            return budget

    def publish(self, upload: Upload, name: str | None = None) -> Delivery:
        """Seal the upload and make it a delivery, with its key jobs, in one transaction."""
        name = check_name(name or upload.name)
        if name != upload.name:     # a staged upload renamed to its final name
            self.content.check_name(upload.session, upload.tenant, name)
        sealed = upload.seal()
        tenant = upload.tenant
        now = self.clock.now()
        delivery = Delivery(
            id=f"d-{now:%Y%m%d}-{secrets.token_hex(6)}", tenant_id=tenant.id,
            sender_id=upload.session.user.id, name=name, stored_name=name + SUFFIXES[tenant.format],
            format=tenant.format, state=PUBLISHED, plain_size=sealed.plain_size,
            stored_size=sealed.stored_size, plain_sha256=sealed.plain_sha256,
            stored_sha256=sealed.stored_sha256, blob_key="", created_at=iso(now),
            expires_at=iso(now + timedelta(seconds=self.settings.retention.expire_after)),
            collected_at=None, collected_by=None, collected_from=None, removed_at=None,
            removed_reason=None)
        delivery = delivery.__class__(**{**delivery.__dict__, "blob_key": f"{tenant.box_key}/{upload.id}"})
        replaced: list[Delivery] = []
        with self.db.writer(tenant=tenant.id) as tx:
            # Again under the tenant's lock: of two uploads that passed the check at open, only the
            # first to publish may leave a list waiting; the other's CLOSE fails (PolicyRefused).
            replaced = self.policy.admit(tx, tenant, delivery.id, name)
            for old in replaced:
                self._mark_removed(tx, old, REASON_REPLACED, actor=upload.session.actor,
                                   source=upload.session.source, by=delivery.id)
            # A collected file still in its grace period under the same name would shadow the
            # new one in the recipient's listing; it has been collected, so it leaves now.
            for old in fetch(tx, "tenant_id = ? AND state = ? AND stored_name = ?",
                             (tenant.id, COLLECTED, delivery.stored_name)):
                self._mark_removed(tx, old, REASON_COLLECTED, actor=upload.session.actor,
                                   source=upload.session.source, superseded_by=delivery.id)
                replaced.append(old)
            insert(tx, delivery)
            if not tx.execute("DELETE FROM uploads WHERE id = ?", (upload.id,)).rowcount:
                # Another node removed it: this node's lease had passed (it lost the database).
                raise UploadRejected("the upload was interrupted (this server lost touch with the "
                                     "others for a while); send the file again")
            jobs = self.keys.enqueue(tx, delivery, tenant, upload.passphrase)
            self.audit.append(tx, "delivery.publish", actor=upload.session.actor, tenant=tenant.name,
                              delivery=delivery.id, source=upload.session.source, upload=upload.id,
                              name=name, stored_name=delivery.stored_name, plain_size=sealed.plain_size,
                              plain_sha256=sealed.plain_sha256, stored_size=sealed.stored_size,
                              stored_sha256=sealed.stored_sha256, key_jobs=jobs,
                              replaces=[d.id for d in replaced])
            # Inside the transaction: if the rename (S3: CompleteMultipartUpload) fails nothing
            # commits; if we crash after it but before COMMIT, the blob is an orphan the sweep removes.
            self.storage.publish(upload.temp, delivery.blob_key)
        upload.finished = True
        upload.passphrase = ""
        for old in replaced:
            self._retire(old)
        self.keys.wake()
        self.after_transfer()
        return delivery

    def abort(self, upload: Upload, reason: str, error: BaseException | None = None) -> None:
        """Drop an upload that will not be published; nothing of it stays."""
        if upload.finished:
            return
        upload.finished = True
        upload.aborted = f"{reason}: {error}" if error else reason
        upload.release()
        # Record first: if the record cannot be written (disk full) the temporary and its row
        # stay, and the next start's recovery removes them with a record.
        self._forget_upload(upload.id, upload.tenant, upload.session, reason,
                            str(error) if error else "", name=upload.name, received=upload.size)
        self.storage.discard(upload.temp.key)
        self.after_transfer()

    def _forget_upload(self, upload_id: str, tenant: Tenant, session: Session, reason: str,
                       error: str, **detail: Any) -> None:
        with self.db.writer() as tx:
            tx.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
            self.audit.append(tx, "upload.abort", actor=session.actor, tenant=tenant.name,
                              source=session.source, upload=upload_id, reason=reason, error=error,
                              **detail)

    # --- downloads -----------------------------------------------------------------------------
    def open_download(self, session: Session, stored_name: str, coverage: Coverage) -> Download:
        if not session.is_recipient:
            raise PermissionDenied("senders cannot read stored files")
        delivery = self.recipient_file(session, stored_name)
        reader = self.storage.open_read(delivery.blob_key)
        try:  # no byte leaves unrecorded: a failed record fails the OPEN
            self.audit.record("download.open", actor=session.actor, tenant=self._tenant_name(delivery),
                              delivery=delivery.id, source=session.source, name=stored_name)
        except BaseException:
            reader.close()
            raise
        return Download(delivery, reader, coverage, self.revoked)

    def close_download(self, session: Session, download: Download) -> bool:
        """Close the handle; if the session has now read every byte, the delivery is collected."""
        download.reader.close()
        delivery = download.delivery
        complete = download.coverage.covers(delivery.stored_size)
        tenant = self._tenant_name(delivery)
        with self.db.writer() as tx:
            self.audit.append(tx, "download.close", actor=session.actor, tenant=tenant,
                              delivery=delivery.id, source=session.source, bytes_sent=download.sent,
                              covered=download.coverage.total, complete=complete)
            if complete:
                changed = tx.execute(
                    "UPDATE deliveries SET state = ?, collected_at = ?, collected_by = ?, collected_from = ?"
                    " WHERE id = ? AND state = ?", (COLLECTED, iso(self.clock.now()), session.actor,
                                                    session.source, delivery.id, PUBLISHED)).rowcount
                if changed:
                    self.keys.collected(tx, delivery.id)
                    seq = self.audit.append(tx, "delivery.collect", actor=session.actor, tenant=tenant,
                                            delivery=delivery.id, source=session.source,
                                            stored_sha256=delivery.stored_sha256)
                    self.receipts.issue(tx, delivery.id, seq)
        self.after_transfer()
        return complete

    # --- removal: one path for recipients, senders, the janitor and operators -----------------
    def remove(self, delivery: Delivery, reason: str, *, actor: str, source: str | None = None,
               **detail: object) -> bool:
        with self.db.writer(tenant=delivery.tenant_id) as tx:   # not while a publish replaces it
            current = fetch(tx, "id = ?", (delivery.id,))
            if not current or current[0].state == REMOVED:
                return False
            self._mark_removed(tx, current[0], reason, actor=actor, source=source, **detail)
        self._retire(delivery)
        return True

    def _retire(self, delivery: Delivery) -> None:
        """After the removal committed: handles still open on it fail, then the blob goes."""
        self.revoked.add(delivery.id)
        self.storage.delete(delivery.blob_key)

    def _mark_removed(self, tx: Tx, delivery: Delivery, reason: str, *, actor: str,
                      source: str | None, **detail: object) -> None:
        tx.execute("UPDATE deliveries SET state = ?, removed_at = ?, removed_reason = ? WHERE id = ?",
                   (REMOVED, iso(self.clock.now()), reason, delivery.id))
        self.keys.revoke(tx, delivery.id, reason)
        seq = self.audit.append(tx, "delivery.remove", actor=actor, tenant=self._tenant_name(delivery),
                                delivery=delivery.id, source=source, reason=reason, name=delivery.stored_name,
                                **detail)
        if delivery.state == PUBLISHED:  # ended uncollected: expired, replaced, withdrawn, ...
            self.receipts.issue(tx, delivery.id, seq)

    def _tenant_name(self, delivery: Delivery) -> str:
        return self.directory.tenant_name(delivery.tenant_id)

    # --- recovery ------------------------------------------------------------------------------
    def recover(self) -> int:
        """At startup: this node's uploads cut off by its last stop or crash, and those of nodes
        whose lease has passed, are removed and recorded, then orphans; returns how many."""
        return self.sweep_stale_uploads(own=True) + self.sweep_orphans()

    def sweep_stale_uploads(self, *, own: bool = False) -> int:
        """Remove the uploads no live node runs: those of nodes whose lease has passed (or that
        have none: rows from before nodes), with this node's own when `own` (at start only).
        A live node's uploads are never touched. Each removal is recorded; of two sweeps at
        once, the one whose DELETE removes the row records it."""
        now = iso(self.clock.now())
        mine = "u.node = ? OR " if own else ""
        stale = self.db.query(
            "SELECT id, tenant_id, name, temp_key, source, node FROM uploads u"
            f" WHERE {mine}(u.node != ? AND NOT EXISTS"
            " (SELECT 1 FROM nodes n WHERE n.name = u.node AND n.lease_until > ?))"
            " ORDER BY started_at", ((self.node,) if own else ()) + (self.node, now))
        count = 0
        for row in stale:
            tenant = self.directory.tenant_by_id(row["tenant_id"])
            ours = row["node"] == self.node
            with self.db.writer() as tx:
                # another node's row only while its lease is still passed (it may just have renewed it)
                alive = "" if ours else (" AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.name = uploads.node"
                                         " AND n.lease_until > ?)")
                params = (row["id"],) if ours else (row["id"], iso(self.clock.now()))
                if not tx.execute(f"DELETE FROM uploads WHERE id = ?{alive}", params).rowcount:
                    continue
                reason = ("interrupted (server stopped or crashed mid-upload)" if ours else
                          f"interrupted (node {row['node'] or '(unnamed)'} stopped answering: its lease passed)")
                self.audit.append(tx, "upload.abort", actor="sluis", tenant=tenant.name,
                                  source=row["source"], upload=row["id"], name=row["name"],
                                  reason=reason, error="", node=row["node"])
                self.storage.discard(row["temp_key"])  # only once its record is written
            count += 1
        return count

    def sweep_orphans(self) -> int:
        """Remove temporaries and blobs that no record refers to (a crash between publishing the
        blob and COMMIT, an upload whose abort did not reach the store).

        The store is listed before the records are read. A temporary exists only after its
        upload's row committed and its row goes only after it was published or aborted, so one
        listed without a row is stale (an S3 multipart upload: aborted). A blob is published
        just before its delivery commits; where that does not run under this transaction's lock
        (S3, several nodes) a blob must stay unreferenced for `storage.orphan_grace` seconds,
        seen by sweeps of this process, before it is removed.
        """
        removed = 0
        temps = self.storage.temp_keys()
        blobs = self.storage.keys()
        now = self.clock.now()
        with self.db.writer(exclusive=True) as tx:    # not while another process publishes
            live_uploads = {r[0] for r in tx.execute("SELECT temp_key FROM uploads")}
            live_blobs = {r[0] for r in tx.execute("SELECT blob_key FROM deliveries WHERE state != ?",
                                                    (REMOVED,))}
            for key in temps:
                if key not in live_uploads:
                    removed += self._remove_orphan(tx, "temporary", key, self.storage.discard)
            unreferenced = [key for key in blobs if key not in live_blobs]
            self._unreferenced = {key: self._unreferenced.get(key, now) for key in unreferenced}
            for key in unreferenced:
                if (now - self._unreferenced[key]).total_seconds() >= self.storage.orphan_grace:
                    removed += self._remove_orphan(tx, "blob", key, self.storage.delete)
                    del self._unreferenced[key]
        return removed

    def _remove_orphan(self, tx: Tx, kind: str, key: str, remove: Callable[[str], bool]) -> int:
        """Record, then remove; a record that cannot be written stops the removal, and a file
        someone else removed meanwhile takes its record back (savepoint)."""
        tx.execute("SAVEPOINT orphan")
        hooks = len(tx.hooks)
        self.audit.append(tx, "storage.orphan.remove", actor="sluis", kind=kind, key=key)
        if remove(key):
            tx.execute("RELEASE orphan")
            return 1
        tx.execute("ROLLBACK TO orphan")
        tx.execute("RELEASE orphan")
        del tx.hooks[hooks:]  # nor log the record that was taken back
        return 0

"""What each role sees: the virtual namespace over the drop-box core (no real paths anywhere).

Recipient: '/' is its tenant's box, holding NAME.age (or .zip) at stored size.
Sender: '/' holds one folder per active tenant; '/genk/' lists the sender's own deliveries still
waiting there, by the name and plaintext size it wrote, plus its uploads in this session. A
sender may also name a folder by the tenant's NIS code ('/71016/' is '/genk/'); realpath turns
it into the name, which is how `sluis send --batch` maps NIS-named files (docs/listpolicy.md);
and '/receipts/' holds the signed receipts of its own deliveries, read-only (DELIVERY.json, .json.sig).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from asyncssh import SFTPAttrs

from ..core.clock import parse_iso
from ..core.directory import NIS_CODE, Directory
from ..core.dropbox import DropBox
from ..core.dropsession import DropSession, Incoming
from ..core.receipts import Receipt
from ..core.records import Delivery, Tenant
from ..core.session import Session
from ..errors import NotFound, OutsideView, PermissionDenied, SluisError
from .paths import split_path

DIR_MODE = stat.S_IFDIR | 0o700
FILE_MODE = stat.S_IFREG | 0o600


@dataclass(frozen=True)
class Entry:
    """A visible name: a directory, a delivery, or an upload of this session."""

    name: str
    attrs: SFTPAttrs
    delivery: Delivery | None = None
    upload: Incoming | None = None
    tenant: Tenant | None = None
    content: bytes | None = None    # a read-only file served from memory (a receipt)


RECEIPTS = "receipts"               # the sender's receipt folder (a reserved tenant name)
JSON, SIG = ".json", ".json.sig"


@dataclass(frozen=True)
class ReceiptHandle:
    """An open receipt file: a few hundred bytes, served from memory."""

    content: bytes

    def read(self, offset: int, size: int) -> bytes:
        return self.content[offset:offset + size]


def dir_attrs(mtime: int = 0) -> SFTPAttrs:
    return SFTPAttrs(size=0, uid=0, gid=0, permissions=DIR_MODE, atime=mtime, mtime=mtime)


def file_attrs(size: int, mtime: int) -> SFTPAttrs:
    return SFTPAttrs(size=size, uid=0, gid=0, permissions=FILE_MODE, atime=mtime, mtime=mtime)


def _created(delivery: Delivery) -> int:
    return int(parse_iso(delivery.created_at).timestamp())


class View:
    """Resolves normalised path components for one session (called off the event loop)."""

    def __init__(self, dropbox: DropBox, directory: Directory, session: Session, drop: DropSession,
                 started: int) -> None:
        self.dropbox = dropbox
        self.directory = directory  # tenant folders by name or NIS code
        self.session = session
        self.drop = drop            # the uploads open or staged in this session
        self.started = started

    def lookup(self, parts: tuple[str, ...]) -> Entry:
        if not parts:
            return Entry("/", dir_attrs(self.started))
        if self.session.is_recipient:
            if len(parts) == 1:
                try:
                    delivery = self.dropbox.recipient_file(self.session, parts[0])
                except NotFound:
                    self._not_elsewhere(parts[0])
                    raise
                return self._recipient_entry(delivery)
            self._not_elsewhere(parts[0])
        elif parts[0] == RECEIPTS:
            return self._receipt_entry(parts)
        else:
            tenant = self._sender_tenant(parts[0])
            if len(parts) == 1:
                return Entry(tenant.name, dir_attrs(self.started), tenant=tenant)
            if len(parts) == 2:
                return self._sender_file(tenant, parts[1])
        raise NotFound("no such file or folder")

    def _not_elsewhere(self, name: str) -> None:
        """A recipient naming another tenant's folder is an attempt outside its view."""
        try:
            tenant = self.directory.tenant(name)
        except NotFound:
            return
        if tenant.id != self.session.user.tenant_id:
            raise OutsideView("no such file or folder")

    def tenant_dir(self, parts: tuple[str, ...]) -> Tenant:
        """The tenant a sender's path lies in: exactly '/TENANT/NAME'."""
        if self.session.is_sender and parts[:1] == (RECEIPTS,):
            raise PermissionDenied("receipts are read-only")
        if self.session.is_sender and len(parts) == 2:
            return self._sender_tenant(parts[0])
        raise NotFound("files can only be created inside a municipality's folder, as /TENANT/NAME")

    def _sender_tenant(self, part: str) -> Tenant:
        """A sender's folder, by tenant name or by NIS code."""
        if NIS_CODE.match(part):
            return self.dropbox.active_tenant(self.directory.tenant_by_nis(part).name)
        return self.dropbox.active_tenant(part)

    def canonical(self, parts: tuple[str, ...]) -> tuple[str, ...]:
        """realpath: a sender's NIS-code folder becomes the tenant's name; anything else as is."""
        if self.session.is_sender and parts and NIS_CODE.match(parts[0]):
            try:
                return (self._sender_tenant(parts[0]).name, *parts[1:])
            except NotFound:
                pass
        return parts

    def listing(self, parts: tuple[str, ...]) -> list[Entry]:
        entry = self.lookup(parts)
        if entry.delivery or entry.upload:
            return [entry]
        if self.session.is_recipient:
            return [self._recipient_entry(d) for d in self.dropbox.recipient_files(self.session)]
        if parts[:1] == (RECEIPTS,):
            return self._receipt_listing()
        if entry.tenant is None:
            return [Entry(t.name, dir_attrs(self.started), tenant=t)
                    for t in self.directory.tenants(active_only=True)] + [
                Entry(RECEIPTS, dir_attrs(self.started))]
        entries = {d.name: Entry(d.name, file_attrs(d.plain_size, _created(d)), delivery=d)
                   for d in self.dropbox.sender_pending(self.session, entry.tenant)}
        for upload in self.drop.uploads_in(entry.tenant.name):
            entries[upload.name] = Entry(upload.name, file_attrs(upload.size, self.started), upload=upload)
        return sorted(entries.values(), key=lambda e: e.name)

    def is_receipt(self, path: bytes) -> bool:
        """Whether a sender names something under /receipts (anything else it may not read)."""
        try:
            return self.session.is_sender and split_path(path)[:1] == (RECEIPTS,)
        except SluisError:
            return False

    def open_receipt(self, parts: tuple[str, ...]) -> ReceiptHandle:
        """A sender's read: only its own receipts, nothing else (requests.py: read_receipt)."""
        if parts[:1] != (RECEIPTS,) or len(parts) != 2:
            raise PermissionDenied("senders cannot read stored files; their receipts are in /receipts/")
        entry = self._receipt_entry(parts)
        assert entry.content is not None
        return ReceiptHandle(entry.content)

    def _receipt_entry(self, parts: tuple[str, ...]) -> Entry:
        if len(parts) == 1:
            return Entry(RECEIPTS, dir_attrs(self.started))
        name = parts[1]
        if len(parts) != 2 or not name.endswith(JSON) and not name.endswith(SIG):
            raise NotFound("no such receipt")
        delivery_id = name[:-len(SIG)] if name.endswith(SIG) else name[:-len(JSON)]
        receipt = self.dropbox.sender_receipt(self.session, delivery_id)
        return self._receipt_files(receipt)[0 if name.endswith(JSON) else 1]

    def _receipt_listing(self) -> list[Entry]:
        return [entry for receipt in self.dropbox.sender_receipts(self.session)
                for entry in self._receipt_files(receipt)]

    @staticmethod
    def _receipt_files(receipt: Receipt) -> tuple[Entry, Entry]:
        mtime = int(parse_iso(receipt.issued_at).timestamp())
        signature = receipt.signature.encode()
        return (Entry(receipt.json_name, file_attrs(len(receipt.body), mtime), content=receipt.body),
                Entry(receipt.sig_name, file_attrs(len(signature), mtime), content=signature))

    def _recipient_entry(self, delivery: Delivery) -> Entry:
        return Entry(delivery.stored_name, file_attrs(delivery.stored_size, _created(delivery)),
                     delivery=delivery)

    def _sender_file(self, tenant: Tenant, name: str) -> Entry:
        upload = self.drop.upload_named(tenant.name, name)
        if upload is not None:
            return Entry(name, file_attrs(upload.size, self.started), upload=upload, tenant=tenant)
        delivery = self.dropbox.sender_file(self.session, tenant, name)
        return Entry(name, file_attrs(delivery.plain_size, _created(delivery)), delivery=delivery,
                     tenant=tenant)

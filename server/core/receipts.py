"""Signed receipts: when a delivery leaves `published` (collected, expired, replaced, withdrawn,
deleted, removed by an operator) one receipt is written and signed in the same transaction, so
a delivery that ended never lacks its receipt. Format and verification: docs/receipts.md.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any, Callable

from ..formats import sshsig
from .audit import AuditLog
from .clock import Clock, iso
from .deliveries import COLLECTED, fetch
from .notifications import BODY_MAX, EMAIL, NotificationQueue
from .receiptkey import LoadedKey
from .store import Store, Tx

NAMESPACE = "sluis-receipt"
SIGNER = "sluis"
FORMAT_VERSION = 1
OUTCOME_COLLECTED = COLLECTED   # other outcomes are the removal reasons of docs/deliveries.md
LIST_CAP = 10_000               # receipts listed per sender folder (newest first)


def canonical_bytes(body: dict[str, Any]) -> bytes:
    """Sorted keys, no spaces, ASCII only, one trailing newline: the exact bytes that are signed."""
    return (json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode()


@dataclass(frozen=True)
class Receipt:
    delivery_id: str
    outcome: str
    body: bytes          # canonical JSON
    signature: str       # armored SSHSIG
    signer: str          # the public key line that signed it
    issued_at: str

    @property
    def json_name(self) -> str:
        return f"{self.delivery_id}.json"

    @property
    def sig_name(self) -> str:
        return f"{self.delivery_id}.json.sig"


class ReceiptStore:
    """Repository of the `receipts` table, and the signer that fills it."""

    def __init__(self, db: Store, audit: AuditLog, clock: Clock, key: Callable[[], LoadedKey],
                 queue: NotificationQueue, mail_enabled: bool) -> None:
        """`key` is called on first use (commands that never end a delivery need no key)."""
        self.db = db
        self.audit = audit
        self.clock = clock
        self.key = key
        self.queue = queue
        self.mail_enabled = mail_enabled
        self._lock = threading.Lock()
        self._creation_recorded = False

    def _signing_key(self, tx: Tx) -> LoadedKey:
        """The key; its first use by this process is recorded if it is new or not the last one used."""
        loaded = self.key()
        with self._lock:
            if not self._creation_recorded:
                self._creation_recorded = True
                last = tx.execute("SELECT detail FROM audit WHERE event IN ('receipt.key.create', 'receipt.key.change')"
                                  " ORDER BY seq DESC LIMIT 1").fetchone()
                previous = json.loads(last[0]).get("key") if last else None
                if loaded.created:
                    self.audit.append(tx, "receipt.key.create", actor="sluis", key=loaded.fingerprint,
                                      path=loaded.origin)
                elif previous != loaded.fingerprint:   # made by `sluis receipt keygen`, or replaced
                    self.audit.append(tx, "receipt.key.change", actor="sluis", key=loaded.fingerprint,
                                      previous=previous, path=loaded.origin)
        return loaded

    def ensure_key(self) -> LoadedKey:
        """Load (or, on an upgraded setup, create and record) the key now: `serve` fails early."""
        with self.db.writer() as tx:
            return self._signing_key(tx)

    def public_line(self) -> str:
        return sshsig.public_line(self.key().key.public_key())

    def issue(self, tx: Tx, delivery_id: str, audit_seq: int) -> Receipt | None:
        """Write and sign the receipt of a delivery that just ended (its first end only)."""
        if tx.execute("SELECT 1 FROM receipts WHERE delivery_id = ?", (delivery_id,)).fetchone():
            return None
        delivery = fetch(tx, "id = ?", (delivery_id,))[0]
        tenant = tx.execute("SELECT name, nis FROM tenants WHERE id = ?", (delivery.tenant_id,)).fetchone()
        sender = tx.execute("SELECT name, email FROM users WHERE id = ?", (delivery.sender_id,)).fetchone()
        audit_hash = tx.execute("SELECT hash FROM audit WHERE seq = ?", (audit_seq,)).fetchone()[0]
        loaded = self._signing_key(tx)
        collected = delivery.state == COLLECTED
        now = iso(self.clock.now())
        body = {
            "type": "sluis-receipt", "version": FORMAT_VERSION, "delivery": delivery.id,
            "tenant": tenant["name"], "tenant_nis": tenant["nis"], "sender": sender["name"],
            "name": delivery.name, "stored_name": delivery.stored_name, "format": delivery.format,
            "plain_sha256": delivery.plain_sha256, "plain_size": delivery.plain_size,
            "stored_sha256": delivery.stored_sha256, "stored_size": delivery.stored_size,
            "published_at": delivery.created_at,
            "outcome": OUTCOME_COLLECTED if collected else delivery.removed_reason,
            "collected_by": delivery.collected_by, "collected_from": delivery.collected_from,
            "collected_at": delivery.collected_at,
            "ended_at": delivery.collected_at if collected else delivery.removed_at,
            "audit_seq": audit_seq, "audit_hash": audit_hash,
            "issued_at": now, "key": loaded.fingerprint,
        }
        data = canonical_bytes(body)
        signature = sshsig.sign(loaded.key, NAMESPACE, data)
        signer = sshsig.public_line(loaded.key.public_key())
        tx.execute("INSERT INTO receipts (delivery_id, tenant_id, sender_id, outcome, body, signature, signer,"
                   " audit_seq, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (delivery.id, delivery.tenant_id, delivery.sender_id, body["outcome"], data.decode(),
                    signature, signer, audit_seq, now))
        mailed = bool(self.mail_enabled and sender["email"])
        if mailed:
            self.queue.enqueue(tx, EMAIL, sender["email"], _mail_body(body, data, signature),
                               topic=f"receipt {delivery.id}", subject=_mail_subject(body))
        self.audit.append(tx, "receipt.issue", actor="sluis", tenant=tenant["name"], delivery=delivery.id,
                          outcome=body["outcome"], sha256=hashlib.sha256(data).hexdigest(),
                          key=loaded.fingerprint, mailed=mailed)
        return Receipt(delivery.id, body["outcome"], data, signature, signer, now)

    # --- reading ---------------------------------------------------------------------------------
    def for_sender(self, sender_id: int, limit: int = LIST_CAP) -> list[Receipt]:
        rows = self.db.query("SELECT * FROM receipts WHERE sender_id = ? ORDER BY issued_at DESC LIMIT ?",
                             (sender_id, limit))
        return [_receipt(r) for r in rows]

    def of_sender(self, sender_id: int, delivery_id: str) -> Receipt | None:
        row = self.db.query_one("SELECT * FROM receipts WHERE sender_id = ? AND delivery_id = ?",
                                (sender_id, delivery_id))
        return _receipt(row) if row else None

    def get(self, delivery_id: str) -> Receipt | None:
        row = self.db.query_one("SELECT * FROM receipts WHERE delivery_id = ?", (delivery_id,))
        return _receipt(row) if row else None

    def signers(self) -> list[str]:
        """Every public key that signed a stored receipt (more than one after a key change)."""
        return [r[0] for r in self.db.query("SELECT signer FROM receipts GROUP BY signer ORDER BY MIN(issued_at)")]


def _receipt(row: Any) -> Receipt:
    return Receipt(row["delivery_id"], row["outcome"], row["body"].encode(), row["signature"], row["signer"],
                   row["issued_at"])


OUTCOME_NL = {"collected": "opgehaald", "expired": "verlopen (niet opgehaald)", "replaced": "vervangen",
              "withdrawn": "ingetrokken door de afzender", "deleted": "verwijderd door de gemeente",
              "admin": "verwijderd door een beheerder"}


def outcome_nl(outcome: str | None) -> str:
    return OUTCOME_NL.get(outcome or "", outcome or "")


def _mail_subject(body: dict[str, Any]) -> str:
    return f"Ontvangstbewijs {body['delivery']} ({body['tenant']}): {outcome_nl(body['outcome'])}"


def _mail_body(body: dict[str, Any], data: bytes, signature: str) -> str:
    """Explanation, the receipt line and its signature; the explanation goes if it would not fit."""
    tail = "--- receipt ---\n" + data.decode() + "--- end receipt ---\n\n" + signature
    intro = _mail_intro(body)
    return intro + tail if len(intro) + len(tail) <= BODY_MAX else tail


def _mail_intro(body: dict[str, Any]) -> str:
    who = (f"Opgehaald door {body['collected_by']} vanaf {body['collected_from']} op {body['collected_at']}."
           if body["outcome"] == OUTCOME_COLLECTED else f"Beëindigd op {body['ended_at']}.")
    return (f"Ontvangstbewijs voor levering {body['delivery']} aan {body['tenant']} "
            f"({body['name']}, {body['plain_size']} bytes).\n"
            f"Uitkomst: {outcome_nl(body['outcome'])}. {who}\n\n"
            f"Bewaar de regel tussen de markeringen als {body['delivery']}.json en de handtekening als "
            f"{body['delivery']}.json.sig; controleer ze met\n"
            f"  ssh-keygen -Y verify -f allowed_signers -I {SIGNER} -n {NAMESPACE} "
            f"-s {body['delivery']}.json.sig < {body['delivery']}.json\n"
            "(allowed_signers: de regel van `sluis receipt allowed-signers`).\n\n")

-- 6: receipts: one signed receipt per ended delivery (server/core/receipts.py, docs/receipts.md),
-- written in the transaction that ends the delivery.

CREATE TABLE receipts (
    delivery_id TEXT PRIMARY KEY REFERENCES deliveries(id),
    tenant_id INTEGER NOT NULL,
    sender_id INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL,
    signer TEXT NOT NULL,
    audit_seq INTEGER NOT NULL,
    issued_at TEXT NOT NULL
);

CREATE INDEX receipts_sender ON receipts (sender_id, issued_at);

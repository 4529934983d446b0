-- 1: the foundation: tenants, users and keys, deliveries, uploads, sealed secrets, the key
-- outbox and the audit chain.

CREATE TABLE tenants (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    nis TEXT,
    format TEXT NOT NULL DEFAULT 'age',
    email TEXT,
    active INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL
);

CREATE TABLE tenant_phones (
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    e164 TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, e164)
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('sender', 'recipient')),
    tenant_id INTEGER REFERENCES tenants(id),
    active INTEGER NOT NULL DEFAULT 1,
    password_hash BLOB,
    email TEXT,
    created_at TEXT NOT NULL,
    CHECK ((role = 'recipient') = (tenant_id IS NOT NULL))
);

CREATE TABLE user_keys (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    fingerprint TEXT NOT NULL,
    public_key TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    added_at TEXT NOT NULL,
    UNIQUE (user_id, fingerprint)
);

CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    sender_id INTEGER NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    stored_name TEXT NOT NULL,
    format TEXT NOT NULL,
    state TEXT NOT NULL,
    plain_size INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    plain_sha256 TEXT NOT NULL,
    stored_sha256 TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    collected_at TEXT,
    collected_by TEXT,
    collected_from TEXT,
    removed_at TEXT,
    removed_reason TEXT
);

CREATE INDEX deliveries_tenant_state ON deliveries (tenant_id, state);

CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    tenant_id INTEGER NOT NULL,
    sender_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    temp_key TEXT NOT NULL,
    source TEXT NOT NULL,
    started_at TEXT NOT NULL
);

CREATE TABLE secrets (
    delivery_id TEXT PRIMARY KEY REFERENCES deliveries(id),
    sealed BLOB NOT NULL
);

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES deliveries(id),
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    provider_id TEXT,
    provider_status TEXT,
    polls INTEGER NOT NULL DEFAULT 0,
    redacted INTEGER NOT NULL DEFAULT 0,
    redact_attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    payload TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE INDEX outbox_due ON outbox (state, next_attempt_at);

CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    event TEXT NOT NULL,
    actor TEXT NOT NULL,
    tenant TEXT,
    delivery TEXT,
    source TEXT,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);

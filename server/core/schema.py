"""The state schema and its migrations, applied in order; PRAGMA user_version counts them."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the foundation
    """
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
    """,
]

MIGRATIONS.append(
    # 2: the data-sharing protocol register and yearly-limit exceptions (retention/policy.py)
    """
    CREATE TABLE protocols (
        tenant_id INTEGER PRIMARY KEY REFERENCES tenants(id),
        signed TEXT NOT NULL,
        effective TEXT NOT NULL,
        reference TEXT NOT NULL DEFAULT '',
        notice TEXT,
        ends TEXT
    );
    CREATE TABLE allowances (
        id INTEGER PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id),
        granted_at TEXT NOT NULL,
        granted_by TEXT NOT NULL,
        reason TEXT NOT NULL,
        used_by TEXT
    );
    CREATE TABLE resends (
        id INTEGER PRIMARY KEY,
        delivery_id TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        requested_by TEXT NOT NULL
    );
    """
)

# 3: fixes: when an SMS attempt began (the job is `sending` from then until the provider answers)
MIGRATIONS.append("""
    ALTER TABLE outbox ADD COLUMN last_attempt_at TEXT DEFAULT NULL;
    """
)

MIGRATIONS.append(
    # 4: preauth: per-source bans of the defender (core/bans.py), kept across restarts
    """
    CREATE TABLE bans (
        address TEXT PRIMARY KEY,
        banned_at TEXT NOT NULL,
        until TEXT NOT NULL,
        offences INTEGER NOT NULL DEFAULT 1,
        score INTEGER NOT NULL DEFAULT 0,
        reasons TEXT NOT NULL DEFAULT '{}',
        forget_at TEXT NOT NULL
    );
    CREATE INDEX bans_until ON bans (until);
    """
)

EXPECTED_TABLES: tuple[str, ...] = (
    "tenants", "tenant_phones", "users", "user_keys", "deliveries", "uploads", "secrets",
    "outbox", "audit", "protocols", "allowances", "resends", "bans")


MIGRATIONS.append(
    # 5: incidents: incidents and their cursor over the audit log, a generic notification queue,
    # tenant DPOs, user function profiles, key expiry (server/core/incidents.py, notifications.py).
    # An upgraded server starts the incidents cursor at the log's head: history is not re-alerted.
    """
    ALTER TABLE tenants ADD COLUMN dpo_name TEXT DEFAULT NULL;
    ALTER TABLE tenants ADD COLUMN dpo_email TEXT DEFAULT NULL;
    ALTER TABLE tenants ADD COLUMN dpo_phone TEXT DEFAULT NULL;
    ALTER TABLE users ADD COLUMN function TEXT NOT NULL DEFAULT '';
    ALTER TABLE user_keys ADD COLUMN expires_at TEXT DEFAULT NULL;
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        source TEXT,
        account TEXT,
        tenant TEXT,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        count INTEGER NOT NULL,
        what TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'reported')),
        detected_at TEXT NOT NULL,
        deadline TEXT NOT NULL,
        dpo_name TEXT,
        dpo_email TEXT,
        dpo_phone TEXT,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        ack_note TEXT,
        ack_by TEXT,
        ack_at TEXT
    );
    CREATE INDEX incidents_open ON incidents (state, kind);
    CREATE TABLE cursors (
        name TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        hash TEXT
    );
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL CHECK (channel IN ('email', 'sms')),
        target TEXT NOT NULL,
        subject TEXT NOT NULL DEFAULT '',
        body TEXT NOT NULL,
        topic TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        last_error TEXT,
        created_at TEXT NOT NULL,
        sent_at TEXT
    );
    CREATE INDEX notifications_due ON notifications (state, next_attempt_at);
    CREATE INDEX audit_event_ts ON audit (event, ts);
    INSERT INTO cursors (name, seq, hash) SELECT 'incidents', seq, hash FROM audit ORDER BY seq DESC LIMIT 1
    """
)

EXPECTED_TABLES += ("incidents", "cursors", "notifications")

MIGRATIONS.append(
    # 6: receipts: one signed receipt per ended delivery (server/core/receipts.py, docs/receipts.md),
    # written in the transaction that ends the delivery.
    """
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
    CREATE INDEX receipts_sender ON receipts (sender_id, issued_at)
    """
)

EXPECTED_TABLES += ("receipts",)

-- 5: incidents: incidents and their cursor over the audit log, a generic notification queue,
-- tenant DPOs, user function profiles, key expiry (server/core/incidents.py, notifications.py).
-- An upgraded server starts the incidents cursor at the log's head: history is not re-alerted.

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

INSERT INTO cursors (name, seq, hash) SELECT 'incidents', seq, hash FROM audit ORDER BY seq DESC LIMIT 1;

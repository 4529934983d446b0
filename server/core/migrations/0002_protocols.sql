-- 2: the data-sharing protocol register and yearly-limit exceptions (retention/policy.py).

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

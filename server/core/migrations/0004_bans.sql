-- 4: preauth: per-source bans of the defender (core/bans.py), kept across restarts.

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

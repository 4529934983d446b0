-- 9: several nodes on one database: each process runs as a named node that holds a liveness
-- lease (renewed by its heartbeat), and every upload in progress belongs to the node that runs it.
-- A node's restart removes only its own interrupted uploads; a node's janitor removes those of
-- nodes whose lease has passed, never a live node's (server/core/nodes.py). Rows from before
-- this migration belong to no node (''), so the next start or sweep removes them, as before.

CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    started_at TEXT NOT NULL,
    lease_until TEXT NOT NULL
);

ALTER TABLE uploads ADD COLUMN node TEXT NOT NULL DEFAULT '';
CREATE INDEX uploads_node ON uploads (node)

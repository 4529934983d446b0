-- 8: outbox leases: several processes take key-message jobs; a job is held by one process
-- (claimed_by) until lease_until, so a dead process's jobs are taken over once it passes
-- (server/core/outboxstore.py, docs/keydelivery.md).

ALTER TABLE outbox ADD COLUMN claimed_by TEXT DEFAULT NULL;
ALTER TABLE outbox ADD COLUMN lease_until TEXT DEFAULT NULL;
CREATE INDEX outbox_leases ON outbox (claimed_by) WHERE claimed_by IS NOT NULL

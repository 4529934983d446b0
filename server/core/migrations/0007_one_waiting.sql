-- 7: the backstop of the yearly limit's "one list waits at a time" (retention/policy.py): at most
-- one published (waiting) delivery per tenant, whatever the number of writers. The policy check
-- runs under writer(tenant=...), and publish marks what it replaces removed before it inserts,
-- so this index only ever refuses a writer that skipped the lock. If it cannot be created, two
-- deliveries of one tenant are waiting (published): let one be collected or expire, then start
-- sluis again.

CREATE UNIQUE INDEX deliveries_one_waiting ON deliveries (tenant_id) WHERE state = 'published';

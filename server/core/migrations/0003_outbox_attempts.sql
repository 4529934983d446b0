-- 3: when an SMS attempt began (the job is `sending` from then until the provider answers).

ALTER TABLE outbox ADD COLUMN last_attempt_at TEXT DEFAULT NULL;

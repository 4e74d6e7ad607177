-- The ceiling of a worker (issue 16, P5): per transaction, one ready job claimed with
-- FOR UPDATE SKIP LOCKED and marked done, with the worker's durability (claims and
-- outcomes skip the commit's flush: a lost one only makes a job run again).
BEGIN;
SET LOCAL synchronous_commit TO off;
WITH c AS (
    SELECT id FROM jobs WHERE state = 'ready' AND run_at <= extract(epoch FROM clock_timestamp()) AND queue = 'noop'
    ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET state = 'running', attempts = attempts + 1, worker = 'pgbench', lease_until = extract(epoch FROM clock_timestamp()) + 30
FROM c WHERE jobs.id = c.id RETURNING jobs.id AS job \gset
UPDATE jobs SET state = 'done', lease_until = NULL, finished_at = extract(epoch FROM clock_timestamp())
WHERE id = :job AND worker = 'pgbench' AND state = 'running';
END;

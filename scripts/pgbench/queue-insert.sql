-- The ceiling of an enqueue (issue 16, P5b): one job row inserted per transaction,
-- the row `millions jobs enqueue noop` writes, with the same durability (commit flushed).
INSERT INTO jobs (queue, payload, state, attempts, max_attempts, run_at, created_at)
VALUES ('noop', '{}', 'ready', 0, 5, extract(epoch FROM clock_timestamp()), extract(epoch FROM clock_timestamp()));

-- Retention: ended requests are pruned, whole, once older than the retention;
-- expired idempotency keys too.
--
-- A chunk of pruning follows the locking rules of 0001: it locks the requests
-- it deletes first (skipping locked ones), then deletes their batches, then
-- their events. It takes no event lock: deleting events hands out no number.
-- Only one node prunes at a time: each chunk takes the transaction-scoped
-- advisory lock 7311002 with pg_try_advisory_xact_lock, and a node that finds
-- it taken leaves the pass to the holder.

-- When the last pruning pass ended, on any node.
CREATE TABLE pruning (
    id           SMALLINT PRIMARY KEY CHECK (id = 1),
    last_pass_at BIGINT
);
INSERT INTO pruning (id) VALUES (1);

-- Ended requests in the order they ended: a chunk is one index scan.
CREATE INDEX ingestions_ended ON ingestions (finished_at) WHERE open_batches = 0;
-- Idempotency keys by expiry, oldest first.
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Autovacuum for a queue that deletes as much as it inserts. By default a
-- table is vacuumed once 50 rows + 20% of it are dead
-- (autovacuum_vacuum_threshold + autovacuum_vacuum_scale_factor * rows, see
-- "Routine Vacuuming", "The Autovacuum Daemon"): on a table of 10 million
-- batches, 2 million dead rows before the space is marked for reuse, and the
-- table and its indexes bloat meanwhile. A scale factor of 1% (with a floor
-- of 1,000 rows, so small tables are not vacuumed after every chunk) keeps
-- the dead rows to a small part of each table, so pruned space is reused by
-- new rows instead of the files growing. Statistics are refreshed as often
-- (autovacuum_analyze_scale_factor), since these tables' sizes move all the
-- time, and the queue's plans depend on them. Inserted rows trigger a vacuum
-- at 5% (autovacuum_vacuum_insert_scale_factor, PostgreSQL 13+) so that the
-- visibility map of the append-mostly events table stays current.
ALTER TABLE batches SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.05
);
ALTER TABLE events SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.05
);
ALTER TABLE ingestions SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);
ALTER TABLE idempotency_keys SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000
);

-- Named queues. Each queue has a row: its rate limiter's last slot, whether it
-- is paused, and the settings an operator changed at runtime (NULL: the
-- configuration's). Requests and batches name their queue by its row's id;
-- the queue `default` is id 0, so every existing row belongs to it.
CREATE TABLE queues (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    last_slot     INTEGER,                    -- the slot of the queue's latest start
    paused        INTEGER NOT NULL DEFAULT 0, -- 1: nothing starts
    interval_us   INTEGER,                    -- set at runtime; NULL: the configured interval
    max_in_flight INTEGER                     -- set at runtime; NULL: the configured limit
);
INSERT INTO queues (id, name, last_slot)
VALUES (0, 'default', (SELECT last_slot FROM rate_limiter WHERE id = 1));
DROP TABLE rate_limiter;

ALTER TABLE ingestions ADD COLUMN queue INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN queue INTEGER NOT NULL DEFAULT 0;

-- The queue, per queue, in dispatch order.
DROP INDEX batches_waiting;
CREATE INDEX batches_waiting ON batches (queue, lane, priority, ingestion_seq, position)
    WHERE status IN (0, 3);
DROP INDEX batches_retrying;
CREATE INDEX batches_retrying ON batches (queue, retry_at) WHERE status = 3;
DROP INDEX batches_running;
CREATE INDEX batches_running ON batches (queue) WHERE status = 1;

-- The kept counts, per queue.
DROP TRIGGER batches_status_counted;
DROP TRIGGER batches_delete_counted;
CREATE TABLE batch_counts_by_queue (
    queue    INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    status   INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (queue, priority, status)
) WITHOUT ROWID;
INSERT INTO batch_counts_by_queue (queue, priority, status, n)
SELECT 0, priority, status, n FROM batch_counts;
DROP TABLE batch_counts;
ALTER TABLE batch_counts_by_queue RENAME TO batch_counts;

CREATE TRIGGER batches_status_counted AFTER UPDATE OF status ON batches
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE batch_counts SET n = n - 1
    WHERE queue = OLD.queue AND priority = OLD.priority AND status = OLD.status;
    UPDATE batch_counts SET n = n + 1
    WHERE queue = NEW.queue AND priority = NEW.priority AND status = NEW.status;
END;
CREATE TRIGGER batches_delete_counted AFTER DELETE ON batches
BEGIN
    UPDATE batch_counts SET n = n - 1
    WHERE queue = OLD.queue AND priority = OLD.priority AND status = OLD.status;
END;

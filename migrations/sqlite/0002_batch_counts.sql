-- How many batches each (priority, status) has, kept as batches change, so that
-- /stats, /metrics and the queue-depth check read a few rows instead of counting
-- the whole table (a scan that grows with the history, seconds at tens of
-- millions of batches, holding a reader connection meanwhile).
--
-- New batches are counted by the statement that creates them (one UPDATE per
-- request rather than a trigger per row, on the ingest path); status changes,
-- whichever code makes them, by the trigger.
CREATE TABLE batch_counts (
    priority INTEGER NOT NULL,
    status   INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (priority, status)
) WITHOUT ROWID;

INSERT INTO batch_counts (priority, status, n)
SELECT p.value, s.value, 0
FROM json_each('[0, 1, 2]') AS p, json_each('[0, 1, 2, 3, 4, 5]') AS s;

UPDATE batch_counts
SET n = (SELECT count(*) FROM batches b
         WHERE b.priority = batch_counts.priority AND b.status = batch_counts.status);

CREATE TRIGGER batches_status_counted AFTER UPDATE OF status ON batches
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE batch_counts SET n = n - 1 WHERE priority = OLD.priority AND status = OLD.status;
    UPDATE batch_counts SET n = n + 1 WHERE priority = NEW.priority AND status = NEW.status;
END;

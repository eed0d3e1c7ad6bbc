-- Retention: ended requests are pruned, whole, once they are older than the
-- retention; expired idempotency keys too.
--
-- Arrival numbers (`ingestions.seq`) and event ids (`events.seq`) are rowids,
-- handed out as the largest plus one. Pruning therefore never deletes the
-- newest request nor the newest event, so that no number is ever handed out
-- twice: a resuming stream would otherwise be given another request's event
-- under an id it has seen. The count of requests is then the newest arrival
-- number less the requests pruned, one seek instead of a scan.
CREATE TABLE pruning (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    ingestions   INTEGER NOT NULL,   -- requests deleted so far
    held_event   INTEGER,            -- the newest event, of a pruned request: deleted once no longer the newest
    last_pass_at INTEGER             -- when the last pass ended
);
INSERT INTO pruning (id, ingestions) VALUES (1, 0);

-- Ended requests in the order they ended: a chunk is one index seek.
CREATE INDEX ingestions_ended ON ingestions (finished_at) WHERE open_batches = 0;
-- Idempotency keys by expiry, oldest first.
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Deleted batches leave the counts, whichever code deletes them.
CREATE TRIGGER batches_delete_counted AFTER DELETE ON batches
BEGIN
    UPDATE batch_counts SET n = n - 1 WHERE priority = OLD.priority AND status = OLD.status;
END;

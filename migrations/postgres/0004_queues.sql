-- Named queues. Each queue has a row: its rate limiter's last slot, whether it
-- is paused, and the settings an operator changed at runtime (NULL: the
-- configuration's). The queue `default` is id 0, so every existing request
-- and batch belongs to it. The row replaces the single rate limiter: a claim
-- locks its queue's row first, so claims in one queue are serialised (its
-- rate and in-flight limit hold across the cluster) while claims in different
-- queues never wait for each other. The locking rules of 0001 are otherwise
-- unchanged, with "the queue's row" where they say "the rate limiter".
CREATE TABLE queues (
    id            INTEGER  PRIMARY KEY,
    name          TEXT     NOT NULL UNIQUE,
    last_slot     BIGINT,                    -- the slot of the queue's latest start
    paused        BOOLEAN  NOT NULL DEFAULT FALSE,
    interval_us   BIGINT,                    -- set at runtime; NULL: the configured interval
    max_in_flight INTEGER                    -- set at runtime; NULL: the configured limit
);
INSERT INTO queues (id, name, last_slot)
VALUES (0, 'default', (SELECT last_slot FROM rate_limiter WHERE id = 1));
DROP FUNCTION sluice_claim(UUID, BIGINT, BIGINT, BIGINT, BIGINT, INTEGER, BIGINT, INTEGER);
DROP TABLE rate_limiter;

-- A constant default: no table rewrite.
ALTER TABLE ingestions ADD COLUMN queue INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN queue INTEGER NOT NULL DEFAULT 0;

DROP INDEX batches_waiting;
CREATE INDEX batches_waiting ON batches (queue, lane, priority, ingestion_seq, position)
    WHERE status IN (0, 3);
DROP INDEX batches_retrying;
CREATE INDEX batches_retrying ON batches (queue, retry_at) WHERE status = 3;
-- Counted per queue at every claim; the lease index stays for renewals.
CREATE INDEX batches_running_by_queue ON batches (queue) WHERE status = 1;

-- As the one before it, per queue: the queue's row is locked first, and its
-- runtime settings, read under that lock, replace the configured ones. A
-- paused queue answers `paused`. The late tolerance is the interval in force's
-- (a tenth, at most 25 ms: the rule of `Interval::late_tolerance_micros`).
-- Retry times are on the database's clock, as slots are: `sluice_finish`
-- below moves the node's retry time by its skew as it is written.
CREATE FUNCTION sluice_claim(
    node UUID,
    queue_ TEXT,
    ready_at BIGINT,
    local_now BIGINT,
    rate_interval BIGINT,
    slow_down BIGINT,
    max_in_flight_ INTEGER,
    lease BIGINT,
    max_batches INTEGER
) RETURNS TABLE (
    outcome TEXT,
    not_before BIGINT,
    ingestion_seq BIGINT,
    batch_position INTEGER,
    priority SMALLINT,
    ids BYTEA,
    attempts INTEGER,
    ingestion_id UUID,
    slot BIGINT,
    results TEXT
)
LANGUAGE plpgsql AS $$
DECLARE
    db_now         BIGINT := sluice_now_us();
    skew           BIGINT := db_now - local_now;
    v_queue        RECORD;
    v_interval     BIGINT;
    v_tolerance    BIGINT;
    v_max          INTEGER;
    v_slot         BIGINT;
    v_last         BIGINT;
    v_next         BIGINT;
    next_retry     BIGINT;
    running        INTEGER;
    claimed        INTEGER := 0;
    chosen         RECORD;
    -- The events of the claims, written after the loop: the event lock last.
    ev_seqs        BIGINT[] := '{}';
    ev_pos         INTEGER[] := '{}';
BEGIN
    SELECT q.id, q.last_slot, q.paused, q.interval_us, q.max_in_flight INTO v_queue
    FROM queues q WHERE q.name = queue_ FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no queue %', queue_;
    END IF;
    IF v_queue.paused THEN
        RETURN QUERY SELECT 'paused'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::INTEGER,
            NULL::SMALLINT, NULL::BYTEA, NULL::INTEGER, NULL::UUID, NULL::BIGINT, NULL::TEXT;
        RETURN;
    END IF;
    v_interval := GREATEST(coalesce(v_queue.interval_us, rate_interval), slow_down);
    v_tolerance := LEAST(v_interval / 10, 25000);
    v_max := coalesce(v_queue.max_in_flight, max_in_flight_);
    v_last := v_queue.last_slot;
    SELECT count(*) INTO running FROM batches b WHERE b.queue = v_queue.id AND b.status = 1;
    LOOP
        -- GREATEST ignores NULL: a node that waited for its slot passes no ready_at.
        v_slot := GREATEST(ready_at + skew, db_now - v_tolerance);
        IF v_last IS NOT NULL THEN
            v_next := v_last + v_interval;
            IF db_now < v_next THEN
                IF claimed = 0 THEN
                    RETURN QUERY SELECT 'not_before'::TEXT, v_next - skew, NULL::BIGINT,
                        NULL::INTEGER, NULL::SMALLINT, NULL::BYTEA, NULL::INTEGER, NULL::UUID,
                        NULL::BIGINT, NULL::TEXT;
                END IF;
                EXIT;
            END IF;
            v_slot := GREATEST(v_slot, v_next);
        END IF;
        v_slot := LEAST(v_slot, db_now);

        IF running >= v_max THEN
            IF claimed = 0 THEN
                RETURN QUERY SELECT 'busy'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::INTEGER,
                    NULL::SMALLINT, NULL::BYTEA, NULL::INTEGER, NULL::UUID, NULL::BIGINT, NULL::TEXT;
            END IF;
            EXIT;
        END IF;

        SELECT b.ingestion_seq, b.position, b.status INTO chosen
        FROM batches b
        WHERE b.queue = v_queue.id AND b.status IN (0, 3)
          AND (b.retry_at IS NULL OR b.retry_at <= db_now)
        ORDER BY b.lane, b.priority, b.ingestion_seq, b.position
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            IF claimed = 0 THEN
                SELECT min(b.retry_at) INTO next_retry FROM batches b
                WHERE b.queue = v_queue.id AND b.status = 3;
                RETURN QUERY SELECT CASE WHEN next_retry IS NULL THEN 'idle' ELSE 'not_before' END,
                    next_retry - skew, NULL::BIGINT, NULL::INTEGER,
                    NULL::SMALLINT, NULL::BYTEA, NULL::INTEGER, NULL::UUID, NULL::BIGINT, NULL::TEXT;
            END IF;
            EXIT;
        END IF;

        UPDATE queues SET last_slot = v_slot WHERE queues.id = v_queue.id;
        v_last := v_slot;
        UPDATE batches b
        SET status = 1, lane = 1, attempts = b.attempts + 1, retry_at = NULL, scheduled_at = v_slot,
            started_at = db_now, lease_owner = node, lease_expires_at = db_now + lease
        WHERE b.ingestion_seq = chosen.ingestion_seq AND b.position = chosen.position;
        -- Between attempts a batch already reads `triggered`: no change to announce.
        IF chosen.status <> 3 THEN
            ev_seqs := ev_seqs || chosen.ingestion_seq;
            ev_pos := ev_pos || chosen.position;
        END IF;
        UPDATE ingestions i SET started = TRUE WHERE i.seq = chosen.ingestion_seq AND NOT i.started;
        IF FOUND THEN
            ev_seqs := ev_seqs || chosen.ingestion_seq;
            ev_pos := ev_pos || NULL::INTEGER;
        END IF;

        RETURN QUERY
        SELECT 'started'::TEXT, NULL::BIGINT, b.ingestion_seq, b.position, b.priority, b.ids,
            b.attempts, i.id, v_slot, b.results
        FROM batches b JOIN ingestions i ON i.seq = b.ingestion_seq
        WHERE b.ingestion_seq = chosen.ingestion_seq AND b.position = chosen.position;
        claimed := claimed + 1;
        running := running + 1;
        EXIT WHEN claimed >= max_batches;
    END LOOP;
    FOR n IN 1 .. coalesce(array_length(ev_seqs, 1), 0) LOOP
        PERFORM sluice_event(ev_seqs[n], ev_pos[n], 1, db_now);
    END LOOP;
END
$$;

-- As `sluice_requeue(owner)`, for one queue's batches only: the dispatcher of
-- one queue hands back what it leaves unfinished without touching the batches
-- other queues' dispatchers on the same node are still processing.
CREATE FUNCTION sluice_release(owner UUID, queue_ TEXT) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    n INTEGER;
BEGIN
    UPDATE batches b
    SET status = 3, lane = 0, retry_at = NULL, lease_owner = NULL, lease_expires_at = NULL
    WHERE (b.ingestion_seq, b.position) IN (
        SELECT r.ingestion_seq, r.position FROM batches r
        WHERE r.status = 1 AND r.lease_owner = owner
          AND r.queue = (SELECT q.id FROM queues q WHERE q.name = queue_)
        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('sluice_work', '');
    END IF;
    RETURN n;
END
$$;

-- A retry time comes from the node, on its clock, and a claim compares it with the
-- database's: move it onto the database's clock by the node's skew as it is
-- written (as a claim moves `ready_at`), so a retry waits as long as the node
-- asked, whatever the node's clock says.
CREATE OR REPLACE FUNCTION sluice_finish(
    node UUID, seq_ BIGINT, position_ INTEGER, status_ INTEGER, retry_at_ BIGINT,
    results_ TEXT, at BIGINT
) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    cancelled BOOLEAN;
    final     INTEGER := status_;
    ended     BOOLEAN := FALSE;
BEGIN
    -- The request's row first: a cancel racing this attempt either sees the
    -- retry (and cancels it) or is seen by it.
    SELECT i.cancelled_at IS NOT NULL INTO cancelled FROM ingestions i WHERE i.seq = seq_
    FOR NO KEY UPDATE;
    IF final = 3 AND cancelled THEN
        final := 5;
    END IF;
    UPDATE batches
    SET status = final,
        retry_at = CASE WHEN final = 3 THEN retry_at_ + (sluice_now_us() - at) END,
        completed_at = CASE WHEN final IN (2, 4, 5) THEN at END,
        results = results_, lease_owner = NULL, lease_expires_at = NULL
    WHERE ingestion_seq = seq_ AND position = position_ AND status = 1 AND lease_owner = node;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('sluice_work', '');
    IF final = 3 THEN
        RETURN FALSE;
    END IF;
    ended := sluice_close_batches(seq_, 1, at);
    PERFORM sluice_event(seq_, position_, final, at);
    IF ended THEN
        PERFORM sluice_ended(seq_, at);
    END IF;
    RETURN ended;
END
$$;

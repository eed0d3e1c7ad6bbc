-- Outcomes as text, interrupted batches first.
--
-- `results` becomes TEXT: JSONB refuses a NUL character (`\u0000`), which an
-- upstream may well send, and the attempt could then never be recorded. The
-- text is serde_json's, which escapes every control character, so it holds no
-- NUL byte and keeps the answer as it was.
--
-- A batch interrupted while processing (its node died and its lease ran out,
-- or a node stopping handed it back) had started: it keeps reading
-- `triggered`, waits as a batch between attempts (status 3, so it does not
-- count as processing), and runs again before any other waiting batch,
-- whatever their priority, since a started batch is never pre-empted. `lane` 0
-- marks it; the queue is now ordered by lane first. The locking rules of 0001
-- are unchanged.

ALTER TABLE batches ALTER COLUMN results TYPE TEXT USING results::TEXT;

DROP INDEX batches_waiting;
CREATE INDEX batches_waiting ON batches (lane, priority, ingestion_seq, position)
    WHERE status IN (0, 3);

-- Batches that an earlier version put back as `yet_to_start` had started: they
-- read `triggered` again.
UPDATE batches SET status = 3, retry_at = NULL WHERE status = 0 AND attempts > 0;

DROP FUNCTION sluice_claim(UUID, BIGINT, BIGINT, BIGINT, BIGINT, INTEGER, BIGINT, INTEGER);
CREATE FUNCTION sluice_claim(
    node UUID,
    ready_at BIGINT,
    local_now BIGINT,
    rate_interval BIGINT,
    late_tolerance BIGINT,
    max_in_flight INTEGER,
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
    db_now     BIGINT := sluice_now_us();
    skew       BIGINT := db_now - local_now;
    v_slot     BIGINT;
    v_last     BIGINT;
    v_next     BIGINT;
    next_retry BIGINT;
    running    INTEGER;
    claimed    INTEGER := 0;
    chosen     RECORD;
    -- The events of the claims, written after the loop: the event lock last.
    ev_seqs    BIGINT[] := '{}';
    ev_pos     INTEGER[] := '{}';
BEGIN
    SELECT r.last_slot INTO v_last FROM rate_limiter r WHERE r.id = 1 FOR UPDATE;
    SELECT count(*) INTO running FROM batches b WHERE b.status = 1;
    LOOP
        -- GREATEST ignores NULL: a node that waited for its slot passes no ready_at.
        v_slot := GREATEST(ready_at + skew, db_now - late_tolerance);
        IF v_last IS NOT NULL THEN
            v_next := v_last + rate_interval;
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

        IF running >= max_in_flight THEN
            IF claimed = 0 THEN
                RETURN QUERY SELECT 'busy'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::INTEGER,
                    NULL::SMALLINT, NULL::BYTEA, NULL::INTEGER, NULL::UUID, NULL::BIGINT, NULL::TEXT;
            END IF;
            EXIT;
        END IF;

        SELECT b.ingestion_seq, b.position, b.status INTO chosen
        FROM batches b
        WHERE b.status IN (0, 3) AND (b.retry_at IS NULL OR b.retry_at <= db_now)
        ORDER BY b.lane, b.priority, b.ingestion_seq, b.position
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            IF claimed = 0 THEN
                SELECT min(b.retry_at) INTO next_retry FROM batches b WHERE b.status = 3;
                RETURN QUERY SELECT CASE WHEN next_retry IS NULL THEN 'idle' ELSE 'not_before' END,
                    next_retry - skew, NULL::BIGINT, NULL::INTEGER,
                    NULL::SMALLINT, NULL::BYTEA, NULL::INTEGER, NULL::UUID, NULL::BIGINT, NULL::TEXT;
            END IF;
            EXIT;
        END IF;

        UPDATE rate_limiter SET last_slot = v_slot WHERE rate_limiter.id = 1;
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

DROP FUNCTION sluice_finish(UUID, BIGINT, INTEGER, INTEGER, BIGINT, JSONB, BIGINT);
CREATE FUNCTION sluice_finish(
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
        retry_at = CASE WHEN final = 3 THEN retry_at_ END,
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

-- Puts running batches back in the queue, ahead of every other waiting batch:
-- those of `owner` (a node handing its work back as it stops) or, when `owner`
-- is NULL, every batch whose lease has run out (its node died). They keep
-- reading `triggered`, so there is no event to write. Batches another
-- transaction holds are left for the next call. Returns how many went back.
CREATE OR REPLACE FUNCTION sluice_requeue(owner UUID) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    db_now BIGINT := sluice_now_us();
    n      INTEGER;
BEGIN
    UPDATE batches b
    SET status = 3, lane = 0, retry_at = NULL, lease_owner = NULL, lease_expires_at = NULL
    WHERE (b.ingestion_seq, b.position) IN (
        SELECT r.ingestion_seq, r.position FROM batches r
        WHERE r.status = 1
          AND (r.lease_owner = owner OR (owner IS NULL AND r.lease_expires_at < db_now))
        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('sluice_work', '');
    END IF;
    RETURN n;
END
$$;

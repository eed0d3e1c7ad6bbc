-- Sluice on PostgreSQL: the same model as the SQLite store, shared by every node.
-- Times are microseconds since the Unix epoch, read from the database's clock
-- wherever nodes must agree (claims, leases), so clock skew between nodes cannot
-- break the rate limit.

CREATE FUNCTION sluice_now_us() RETURNS BIGINT
LANGUAGE sql VOLATILE AS $$
    SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT
$$;

-- Requests, in arrival order: `seq` is the arrival number the dispatcher sorts by.
CREATE TABLE ingestions (
    seq               BIGSERIAL PRIMARY KEY,
    id                UUID     NOT NULL UNIQUE,
    priority          SMALLINT NOT NULL,   -- 0 HIGH, 1 MEDIUM, 2 LOW
    created_at        BIGINT   NOT NULL,
    open_batches      INTEGER  NOT NULL,   -- batches not yet ended; 0 = the request has ended
    finished_at       BIGINT,
    cancelled_at      BIGINT,
    started           BOOLEAN  NOT NULL DEFAULT FALSE,  -- once a batch has started
    callback_url      TEXT,
    callback_state    SMALLINT,            -- NULL none, 0 pending, 1 delivered, 2 gave up
    callback_due_at   BIGINT,
    callback_attempts INTEGER  NOT NULL DEFAULT 0,
    callback_error    TEXT
);
CREATE INDEX ingestions_callbacks_due ON ingestions (callback_due_at) WHERE callback_state = 0;

-- Idempotency keys of POST /ingest: the same key and body give the same request.
CREATE TABLE idempotency_keys (
    key          TEXT   PRIMARY KEY,
    fingerprint  BYTEA  NOT NULL,
    ingestion_id UUID   NOT NULL,
    expires_at   BIGINT NOT NULL
);

CREATE TABLE batches (
    ingestion_seq    BIGINT   NOT NULL REFERENCES ingestions (seq),
    position         INTEGER  NOT NULL,
    priority         SMALLINT NOT NULL,
    status           SMALLINT NOT NULL DEFAULT 0,  -- 0 yet_to_start, 1 triggered, 2 completed,
                                                   -- 3 retrying, 4 failed, 5 cancelled
    lane             SMALLINT NOT NULL DEFAULT 1,  -- 0: handed back or rescued, served first in its priority
    attempts         INTEGER  NOT NULL DEFAULT 0,
    ids              BYTEA    NOT NULL,            -- the ids as little-endian u32s
    retry_at         BIGINT,                       -- retrying: not claimed before this
    scheduled_at     BIGINT,                       -- the start's slot on the rate limiter's grid
    started_at       BIGINT,
    completed_at     BIGINT,
    lease_owner      UUID,                         -- the node processing it
    lease_expires_at BIGINT,                       -- past this, any node may re-queue it
    results          JSONB,                        -- one outcome per id fetched so far
    PRIMARY KEY (ingestion_seq, position)
);

-- The queue, in dispatch order: a claim is one index seek.
CREATE INDEX batches_waiting ON batches (priority, lane, ingestion_seq, position)
    WHERE status IN (0, 3);
CREATE INDEX batches_retrying ON batches (retry_at) WHERE status = 3;
-- Batches processing now: counted against max-in-flight, renewed, rescued.
CREATE INDEX batches_running ON batches (lease_owner, lease_expires_at) WHERE status = 1;

-- Every status change, in commit order: the source of the live progress streams
-- (SSE), so a client that reconnects with Last-Event-ID loses nothing.
CREATE TABLE events (
    seq           BIGSERIAL PRIMARY KEY,   -- the SSE event id
    ingestion_seq BIGINT   NOT NULL,
    position      INTEGER,                 -- the batch; NULL for the request itself
    status        SMALLINT NOT NULL,       -- a batch status code, or a request's (same codes)
    at            BIGINT   NOT NULL
);
CREATE INDEX events_by_ingestion ON events (ingestion_seq, seq);

-- Locks. Every transaction takes its locks in one order, so that nodes never
-- deadlock: the rate limiter, then a request's row, then batch rows, then the
-- event lock (always last: a transaction holding it waits for no row). Where a
-- statement would have to wait against that order it skips locked rows instead
-- (the claim's choice of batch, cancel, re-queue). The one step out of order,
-- a claim marking its request started after locking the batch, cannot close a
-- cycle: what locks a request and then waits for a batch waits only for a
-- running batch (status 1), and a claim never locks one.

-- Appends an event. Writers of events queue on one transaction-scoped lock, so
-- sequence numbers are handed out in commit order: a reader that has seen event
-- n will never later find an event below n. Call it after every row lock the
-- transaction needs.
CREATE FUNCTION sluice_event(seq_ BIGINT, position_ INTEGER, status_ INTEGER, at_ BIGINT)
RETURNS VOID
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7311001);
    INSERT INTO events (ingestion_seq, position, status, at) VALUES (seq_, position_, status_, at_);
END
$$;

-- The rate limiter's state, one row for the cluster. Every claim locks it, so
-- claims are serialised and the rate and the in-flight limit hold cluster-wide.
CREATE TABLE rate_limiter (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_slot BIGINT
);
INSERT INTO rate_limiter (id, last_slot) VALUES (1, NULL);

-- Claims the next batches in one round trip and one transaction: up to
-- `max_batches`, each checked against the rate and in-flight limits as if it
-- were claimed alone, stopping at the first that may not start now (so several
-- only when there is no interval to wait).
--
-- The node passes its own clock (`local_now`) so that the answer's time
-- (`not_before`) can be given back in the node's clock, while every decision is
-- taken on the database's clock. A start's slot is max(previous slot + interval,
-- the moment the node became ready, now - late_tolerance): a backlog keeps an
-- exact grid, and a claim that comes late starts a new grid rather than letting
-- the next start follow too closely.
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
    results JSONB
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
                        NULL::BIGINT, NULL::JSONB;
                END IF;
                EXIT;
            END IF;
            v_slot := GREATEST(v_slot, v_next);
        END IF;
        v_slot := LEAST(v_slot, db_now);

        IF running >= max_in_flight THEN
            IF claimed = 0 THEN
                RETURN QUERY SELECT 'busy'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::INTEGER,
                    NULL::SMALLINT, NULL::BYTEA, NULL::INTEGER, NULL::UUID, NULL::BIGINT, NULL::JSONB;
            END IF;
            EXIT;
        END IF;

        SELECT b.ingestion_seq, b.position, b.status INTO chosen
        FROM batches b
        WHERE b.status IN (0, 3) AND (b.retry_at IS NULL OR b.retry_at <= db_now)
        ORDER BY b.priority, b.lane, b.ingestion_seq, b.position
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            IF claimed = 0 THEN
                SELECT min(b.retry_at) INTO next_retry FROM batches b WHERE b.status = 3;
                RETURN QUERY SELECT CASE WHEN next_retry IS NULL THEN 'idle' ELSE 'not_before' END,
                    next_retry - skew, NULL::BIGINT, NULL::INTEGER,
                    NULL::SMALLINT, NULL::BYTEA, NULL::INTEGER, NULL::UUID, NULL::BIGINT, NULL::JSONB;
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

-- Counts `n` batches of a request as ended; when none is left open, the request
-- has ended and its callback (if any) becomes due. Returns whether it ended.
-- The caller holds the request's row and announces the end (sluice_ended).
CREATE FUNCTION sluice_close_batches(seq_ BIGINT, n INTEGER, at BIGINT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    open INTEGER;
BEGIN
    UPDATE ingestions SET open_batches = open_batches - n WHERE seq = seq_
    RETURNING open_batches INTO open;
    IF open > 0 THEN
        RETURN FALSE;
    END IF;
    UPDATE ingestions
    SET finished_at = at, callback_due_at = CASE WHEN callback_state = 0 THEN at END
    WHERE seq = seq_;
    RETURN TRUE;
END
$$;

-- Announces that a request has ended, with the status its batches give it.
CREATE FUNCTION sluice_ended(seq_ BIGINT, at BIGINT) RETURNS VOID
LANGUAGE sql AS $$
    SELECT sluice_event(seq_, NULL,
        (SELECT CASE WHEN bool_or(status = 4) THEN 4 WHEN bool_or(status = 5) THEN 5 ELSE 2 END
         FROM batches WHERE ingestion_seq = seq_),
        at)
$$;

-- Records the end of an attempt by the node holding the batch's lease: the
-- batch is completed (2), failed (4) or waits for a retry (3); a retry of a
-- cancelled request is cancelled (5) instead. Returns NULL when the node no
-- longer holds the lease (another node rescued the batch), otherwise whether
-- this ended the whole request.
CREATE FUNCTION sluice_finish(
    node UUID, seq_ BIGINT, position_ INTEGER, status_ INTEGER, retry_at_ BIGINT,
    results_ JSONB, at BIGINT
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

-- Cancels the batches of a request that have not started. A batch that a claim
-- is starting at this very moment is skipped: it counts as started. Returns
-- NULL for an unknown request, otherwise how many batches were cancelled.
CREATE FUNCTION sluice_cancel(id_ UUID, at BIGINT) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    seq_      BIGINT;
    positions INTEGER[];
    p         INTEGER;
    ended     BOOLEAN := FALSE;
BEGIN
    UPDATE ingestions SET cancelled_at = coalesce(cancelled_at, at) WHERE id = id_
    RETURNING seq INTO seq_;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    WITH cancelled AS (
        UPDATE batches b SET status = 5, retry_at = NULL, completed_at = at
        WHERE b.ingestion_seq = seq_ AND b.position IN (
            SELECT w.position FROM batches w
            WHERE w.ingestion_seq = seq_ AND w.status IN (0, 3)
            FOR UPDATE SKIP LOCKED)
        RETURNING b.position
    )
    SELECT coalesce(array_agg(c.position ORDER BY c.position), '{}') INTO positions FROM cancelled c;
    IF cardinality(positions) = 0 THEN
        RETURN 0;
    END IF;
    ended := sluice_close_batches(seq_, cardinality(positions), at);
    FOREACH p IN ARRAY positions LOOP
        PERFORM sluice_event(seq_, p, 5, at);
    END LOOP;
    IF ended THEN
        PERFORM sluice_ended(seq_, at);
    END IF;
    PERFORM pg_notify('sluice_work', '');
    RETURN cardinality(positions);
END
$$;

-- Puts running batches back in the queue, first in their priority: those of
-- `owner` (a node handing its work back as it stops) or, when `owner` is NULL,
-- every batch whose lease has run out (its node died). Batches another
-- transaction holds are left for the next call. Returns how many went back.
CREATE FUNCTION sluice_requeue(owner UUID) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    db_now    BIGINT := sluice_now_us();
    seqs      BIGINT[];
    positions INTEGER[];
BEGIN
    WITH back AS (
        UPDATE batches b
        SET status = 0, lane = 0, lease_owner = NULL, lease_expires_at = NULL,
            scheduled_at = NULL, started_at = NULL
        WHERE (b.ingestion_seq, b.position) IN (
            SELECT r.ingestion_seq, r.position FROM batches r
            WHERE r.status = 1
              AND (r.lease_owner = owner OR (owner IS NULL AND r.lease_expires_at < db_now))
            FOR UPDATE SKIP LOCKED)
        RETURNING b.ingestion_seq, b.position
    )
    SELECT array_agg(k.ingestion_seq ORDER BY k.ingestion_seq, k.position),
           array_agg(k.position ORDER BY k.ingestion_seq, k.position)
    INTO seqs, positions FROM back k;
    IF seqs IS NULL THEN
        RETURN 0;
    END IF;
    FOR n IN 1 .. cardinality(seqs) LOOP
        PERFORM sluice_event(seqs[n], positions[n], 0, db_now);
    END LOOP;
    PERFORM pg_notify('sluice_work', '');
    RETURN cardinality(seqs);
END
$$;

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
    seq        BIGSERIAL PRIMARY KEY,
    id         UUID     NOT NULL UNIQUE,
    priority   SMALLINT NOT NULL,           -- 0 HIGH, 1 MEDIUM, 2 LOW
    created_at BIGINT   NOT NULL
);

CREATE TABLE batches (
    ingestion_seq    BIGINT   NOT NULL REFERENCES ingestions (seq),
    position         INTEGER  NOT NULL,
    priority         SMALLINT NOT NULL,
    status           SMALLINT NOT NULL DEFAULT 0,  -- 0 yet_to_start, 1 triggered, 2 completed
    lane             SMALLINT NOT NULL DEFAULT 1,  -- 0: handed back or rescued, served first in its priority
    attempts         INTEGER  NOT NULL DEFAULT 0,
    ids              BYTEA    NOT NULL,            -- the ids as little-endian u32s
    scheduled_at     BIGINT,                       -- the start's slot on the rate limiter's grid
    started_at       BIGINT,
    completed_at     BIGINT,
    lease_owner      UUID,                         -- the node processing it
    lease_expires_at BIGINT,                       -- past this, any node may re-queue it
    results          JSONB,
    PRIMARY KEY (ingestion_seq, position)
);

-- The queue, in dispatch order: a claim is one index seek.
CREATE INDEX batches_waiting ON batches (priority, lane, ingestion_seq, position) WHERE status = 0;
-- Batches processing now: counted against max-in-flight, renewed, rescued.
CREATE INDEX batches_running ON batches (lease_owner, lease_expires_at) WHERE status = 1;

-- The rate limiter's state, one row for the cluster. Every claim locks it, so
-- claims are serialised and the rate and the in-flight limit hold cluster-wide.
CREATE TABLE rate_limiter (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_slot BIGINT
);
INSERT INTO rate_limiter (id, last_slot) VALUES (1, NULL);

-- Claims the next batch in one round trip and one transaction.
--
-- The node passes its own clock (`local_now`) so that the answer's time
-- (`not_before`) can be given back in the node's clock, while every decision is
-- taken on the database's clock. A start's slot is max(previous slot + interval,
-- the moment the node became ready), which keeps a backlog on an exact grid.
CREATE FUNCTION sluice_claim(
    node UUID,
    ready_at BIGINT,
    local_now BIGINT,
    rate_interval BIGINT,
    max_in_flight INTEGER,
    lease BIGINT
) RETURNS TABLE (
    outcome TEXT,
    not_before BIGINT,
    ingestion_seq BIGINT,
    batch_position INTEGER,
    priority SMALLINT,
    ids BYTEA,
    attempts INTEGER,
    ingestion_id UUID,
    slot BIGINT
)
LANGUAGE plpgsql AS $$
DECLARE
    db_now  BIGINT := sluice_now_us();
    skew    BIGINT := db_now - local_now;
    v_slot  BIGINT := LEAST(ready_at + skew, db_now);
    v_last  BIGINT;
    v_next  BIGINT;
    running INTEGER;
    chosen  RECORD;
BEGIN
    SELECT r.last_slot INTO v_last FROM rate_limiter r WHERE r.id = 1 FOR UPDATE;
    IF v_last IS NOT NULL THEN
        v_next := v_last + rate_interval;
        IF db_now < v_next THEN
            RETURN QUERY SELECT 'not_before'::TEXT, v_next - skew, NULL::BIGINT, NULL::INTEGER,
                NULL::SMALLINT, NULL::BYTEA, NULL::INTEGER, NULL::UUID, NULL::BIGINT;
            RETURN;
        END IF;
        v_slot := GREATEST(v_slot, v_next);
    END IF;

    SELECT count(*) INTO running FROM batches b WHERE b.status = 1;
    IF running >= max_in_flight THEN
        RETURN QUERY SELECT 'busy'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::INTEGER,
            NULL::SMALLINT, NULL::BYTEA, NULL::INTEGER, NULL::UUID, NULL::BIGINT;
        RETURN;
    END IF;

    SELECT b.ingestion_seq, b.position INTO chosen
    FROM batches b
    WHERE b.status = 0
    ORDER BY b.priority, b.lane, b.ingestion_seq, b.position
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'idle'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::INTEGER,
            NULL::SMALLINT, NULL::BYTEA, NULL::INTEGER, NULL::UUID, NULL::BIGINT;
        RETURN;
    END IF;

    UPDATE rate_limiter SET last_slot = v_slot WHERE rate_limiter.id = 1;
    RETURN QUERY
    UPDATE batches b
    SET status = 1, lane = 1, attempts = b.attempts + 1, scheduled_at = v_slot,
        started_at = db_now, lease_owner = node, lease_expires_at = db_now + lease
    FROM ingestions i
    WHERE b.ingestion_seq = chosen.ingestion_seq AND b.position = chosen.position
      AND i.seq = b.ingestion_seq
    RETURNING 'started'::TEXT, NULL::BIGINT, b.ingestion_seq, b.position, b.priority, b.ids,
        b.attempts, i.id, v_slot;
END
$$;

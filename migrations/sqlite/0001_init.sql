-- Requests, in arrival order: `seq` is the arrival number the dispatcher sorts by.
CREATE TABLE ingestions (
    seq               INTEGER PRIMARY KEY,
    id                BLOB    NOT NULL UNIQUE,   -- UUIDv7, 16 bytes
    priority          INTEGER NOT NULL,          -- 0 HIGH, 1 MEDIUM, 2 LOW
    created_at        INTEGER NOT NULL,          -- microseconds since the Unix epoch
    open_batches      INTEGER NOT NULL,          -- batches not yet ended; 0 = the request has ended
    finished_at       INTEGER,
    cancelled_at      INTEGER,
    started           INTEGER NOT NULL DEFAULT 0, -- 1 once a batch has started
    callback_url      TEXT,
    callback_state    INTEGER,                   -- NULL none, 0 pending, 1 delivered, 2 gave up
    callback_due_at   INTEGER,                   -- next delivery attempt (pending only)
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    callback_error    TEXT                       -- why the last delivery failed
);

-- Callbacks waiting for delivery.
CREATE INDEX ingestions_callbacks_due ON ingestions (callback_due_at) WHERE callback_state = 0;

-- Batches, keyed by their request and position in it.
CREATE TABLE batches (
    ingestion_seq INTEGER NOT NULL REFERENCES ingestions (seq),
    position      INTEGER NOT NULL,
    priority      INTEGER NOT NULL,            -- copied from the request for the queue index
    status        INTEGER NOT NULL DEFAULT 0,  -- 0 yet_to_start, 1 triggered, 2 completed,
                                               -- 3 retrying, 4 failed, 5 cancelled
    lane          INTEGER NOT NULL DEFAULT 1,  -- 0: put back after a crash, served first in its priority
    attempts      INTEGER NOT NULL DEFAULT 0,
    ids           BLOB    NOT NULL,            -- the ids as little-endian u32s
    retry_at      INTEGER,                     -- retrying: not claimed before this
    scheduled_at  INTEGER,                     -- the start's slot on the rate limiter's grid
    started_at    INTEGER,                     -- when it really started (never before its slot)
    completed_at  INTEGER,                     -- when it ended (completed, failed or cancelled)
    results       TEXT,                        -- JSON array, one outcome per id fetched so far
    PRIMARY KEY (ingestion_seq, position)
) WITHOUT ROWID;

-- The queue: batches that may be claimed, in dispatch order, so a claim is one
-- index seek. A retrying batch keeps its place and waits for its `retry_at`.
CREATE INDEX batches_waiting ON batches (priority, lane, ingestion_seq, position)
    WHERE status IN (0, 3);
-- When the earliest retry is due, for a dispatcher with nothing else to do.
CREATE INDEX batches_retrying ON batches (retry_at) WHERE status = 3;
-- Batches processing now, counted against max-in-flight at every claim.
CREATE INDEX batches_running ON batches (ingestion_seq, position) WHERE status = 1;

-- The rate limiter's state: the slot of the latest start. A restart reads it, so
-- it never starts a batch sooner than the rate allows.
CREATE TABLE rate_limiter (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_slot INTEGER NOT NULL
);

-- Idempotency keys of POST /ingest: the same key and body give the same request.
CREATE TABLE idempotency_keys (
    key          TEXT    PRIMARY KEY,
    fingerprint  BLOB    NOT NULL,             -- SHA-256 of the request's content
    ingestion_id BLOB    NOT NULL,
    expires_at   INTEGER NOT NULL
) WITHOUT ROWID;

-- Every status change, in commit order: the source of the live progress streams
-- (SSE), so a client that reconnects with Last-Event-ID loses nothing.
CREATE TABLE events (
    seq           INTEGER PRIMARY KEY,   -- the SSE event id
    ingestion_seq INTEGER NOT NULL,
    position      INTEGER,               -- the batch; NULL for the request itself
    status        INTEGER NOT NULL,      -- a batch status code, or a request's (same codes)
    at            INTEGER NOT NULL
);
CREATE INDEX events_by_ingestion ON events (ingestion_seq, seq);

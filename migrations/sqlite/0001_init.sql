-- Requests, in arrival order: `seq` is the arrival number the dispatcher sorts by.
CREATE TABLE ingestions (
    seq        INTEGER PRIMARY KEY,
    id         BLOB    NOT NULL UNIQUE,   -- UUIDv7, 16 bytes
    priority   INTEGER NOT NULL,          -- 0 HIGH, 1 MEDIUM, 2 LOW
    created_at INTEGER NOT NULL           -- microseconds since the Unix epoch
);

-- Batches, keyed by their request and position in it.
CREATE TABLE batches (
    ingestion_seq INTEGER NOT NULL REFERENCES ingestions (seq),
    position      INTEGER NOT NULL,
    priority      INTEGER NOT NULL,            -- copied from the request for the queue index
    status        INTEGER NOT NULL DEFAULT 0,  -- 0 yet_to_start, 1 triggered, 2 completed
    lane          INTEGER NOT NULL DEFAULT 1,  -- 0: put back after a crash, served first in its priority
    attempts      INTEGER NOT NULL DEFAULT 0,
    ids           BLOB    NOT NULL,            -- the ids as little-endian u32s
    scheduled_at  INTEGER,                     -- the start's slot on the rate limiter's grid
    started_at    INTEGER,                     -- when it really started (never before its slot)
    completed_at  INTEGER,
    results       TEXT,                        -- JSON array, one entry per id
    PRIMARY KEY (ingestion_seq, position)
) WITHOUT ROWID;

-- The queue: only waiting batches, in dispatch order, so a claim is one index seek.
CREATE INDEX batches_waiting ON batches (priority, lane, ingestion_seq, position) WHERE status = 0;

-- Batches processing now, counted against max-in-flight at every claim.
CREATE INDEX batches_running ON batches (ingestion_seq, position) WHERE status = 1;

-- The rate limiter's state: the slot of the latest start. A restart reads it, so
-- it never starts a batch sooner than the rate allows.
CREATE TABLE rate_limiter (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_slot INTEGER NOT NULL
);

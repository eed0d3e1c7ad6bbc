-- Tenants, groups and fair turns.
--
-- A request keeps its tenant (the submitting key's) and its group; '' stands
-- for none. A queue with `fairness = "tenant"` gives the tenants waiting in a
-- priority turns by stride scheduling: each tenant has a pass, the claim
-- serves the tenant of the lowest pass and adds its stride (TURN / weight);
-- a tenant that comes back after waiting for nothing joins at the pass of the
-- tenant served last, so it banks no turns while idle. Inside a tenant its
-- groups take turns the same way. A batch belongs to one flow (its queue,
-- priority, tenant and group); the flows and tenants keep how many of their
-- batches are fresh (yet to start and not interrupted: status 0, lane 1), so
-- the claim finds the next turn by an index lookup, whatever the number of
-- tenants and groups. A cancel leaves the counts as they are (on PostgreSQL
-- it must not wait for the rows a claim holds); the claim that finds a flow
-- emptied sets it right.
ALTER TABLE ingestions ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
ALTER TABLE ingestions ADD COLUMN grp TEXT NOT NULL DEFAULT '';
ALTER TABLE batches ADD COLUMN flow INTEGER NOT NULL DEFAULT 0;

CREATE TABLE fair_flows (
    id       INTEGER PRIMARY KEY,
    queue    INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    tenant   TEXT    NOT NULL,
    grp      TEXT    NOT NULL,
    pass     INTEGER NOT NULL DEFAULT 0, -- the group's place in its tenant's turns
    waiting  INTEGER NOT NULL DEFAULT 0, -- its fresh batches
    UNIQUE (queue, priority, tenant, grp)
);
CREATE INDEX fair_flows_turns ON fair_flows (queue, priority, tenant, pass, id) WHERE waiting > 0;

CREATE TABLE fair_tenants (
    queue       INTEGER NOT NULL,
    priority    INTEGER NOT NULL,
    tenant      TEXT    NOT NULL,
    pass        INTEGER NOT NULL DEFAULT 0, -- the tenant's place in the turns
    waiting     INTEGER NOT NULL DEFAULT 0, -- its fresh batches
    group_clock INTEGER NOT NULL DEFAULT 0, -- the pass of its group served last
    PRIMARY KEY (queue, priority, tenant)
) WITHOUT ROWID;
CREATE INDEX fair_tenants_turns ON fair_tenants (queue, priority, pass, tenant) WHERE waiting > 0;

-- Per queue and priority, the pass of the tenant served last.
CREATE TABLE fair_clocks (
    queue    INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    clock    INTEGER NOT NULL,
    PRIMARY KEY (queue, priority)
) WITHOUT ROWID;

-- A flow's fresh batches, in SPEC.md's order.
CREATE INDEX batches_fresh ON batches (flow, ingestion_seq, position) WHERE status = 0 AND lane = 1;
-- The oldest waiting batch of each priority, for aging and for the fifo order.
-- (batches_waiting of 0005 serves it: queue, lane, priority, ingestion_seq.)

-- What already waits has no tenant and no group.
INSERT INTO fair_flows (queue, priority, tenant, grp, waiting)
SELECT queue, priority, '', '', count(*) FROM batches
WHERE status = 0 AND lane = 1 GROUP BY queue, priority;
INSERT INTO fair_tenants (queue, priority, tenant, waiting)
SELECT queue, priority, '', waiting FROM fair_flows;
UPDATE batches SET flow = (
    SELECT f.id FROM fair_flows f WHERE f.queue = batches.queue AND f.priority = batches.priority
) WHERE status = 0 AND lane = 1;

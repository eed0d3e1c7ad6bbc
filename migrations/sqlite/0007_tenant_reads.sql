-- What a tenant's key reads: its requests newest first (GET /ingestions),
-- and the events of its requests (GET /events), found from its requests
-- rather than by reading every tenant's.
CREATE INDEX ingestions_by_tenant ON ingestions (tenant, seq);

-- Schema version 3: a lease per workflow run, held by the one driver allowed to drive it.
-- lease_holder is "host:pid" (NULL when free), lease_since / lease_expires_at are UNIX seconds, and
-- lease_token is a fencing token: it grows by one on every acquisition, and every status update a
-- driver makes is conditional on the token it acquired still being the current one.
ALTER TABLE workflow_runs ADD COLUMN lease_holder VARCHAR(300);
ALTER TABLE workflow_runs ADD COLUMN lease_since FLOAT;
ALTER TABLE workflow_runs ADD COLUMN lease_expires_at FLOAT;
ALTER TABLE workflow_runs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;

-- Schema version 2: cancellation requests, driver heartbeats, Ray job ids, per-step log files,
-- and an index for cache look-ups.
ALTER TABLE workflow_runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workflow_runs ADD COLUMN heartbeat_at FLOAT;
ALTER TABLE workflow_runs ADD COLUMN job_id VARCHAR(200);
ALTER TABLE step_runs ADD COLUMN log_path VARCHAR(1000);
ALTER TABLE step_runs ADD COLUMN next_attempt_at FLOAT;
CREATE INDEX ix_step_runs_cache_key ON step_runs (cache_key, status);

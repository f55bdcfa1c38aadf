-- detflow workflow state, schema version 1: workflow runs and their steps.
-- Portable SQL (SQLite and PostgreSQL); times are UNIX seconds, JSON is stored as TEXT.
CREATE TABLE workflow_runs (
    id VARCHAR(64) PRIMARY KEY,
    workflow VARCHAR(200) NOT NULL,
    status VARCHAR(20) NOT NULL,
    spec TEXT NOT NULL,
    source VARCHAR(1000),
    address VARCHAR(500),
    mlflow_run_id VARCHAR(64),
    error TEXT,
    driver_pid INTEGER,
    driver_host VARCHAR(200),
    created_at FLOAT NOT NULL,
    started_at FLOAT,
    finished_at FLOAT
);
CREATE TABLE step_runs (
    run_id VARCHAR(64) NOT NULL REFERENCES workflow_runs(id),
    step_id VARCHAR(200) NOT NULL,
    kind VARCHAR(50) NOT NULL,
    status VARCHAR(20) NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cache_key VARCHAR(64),
    outputs TEXT,
    mlflow_run_id VARCHAR(64),
    error TEXT,
    started_at FLOAT,
    finished_at FLOAT,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX ix_step_runs_run ON step_runs (run_id);

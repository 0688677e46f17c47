-- Training usage: one row per optimizer step of a job, written in the transaction that records the step's
-- metrics event. The key (job_id, step) makes a step replayed after a crash a no-op: each step bills once.
CREATE TABLE training_usage (
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    project_id TEXT NOT NULL,
    model TEXT NOT NULL,
    base_model TEXT NOT NULL,
    trained_tokens INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, step)
);
CREATE INDEX training_usage_project_created ON training_usage (project_id, created_at);

-- Stored bytes: the most each project held during each UTC day (`day` is that day's 00:00, unix seconds).
CREATE TABLE storage_usage (
    project_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, day)
);

-- Usage of every organization in a time range (the operator key without an organization header).
CREATE INDEX usage_created ON usage (created_at);

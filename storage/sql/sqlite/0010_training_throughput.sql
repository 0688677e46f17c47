-- Measured training throughput: one row per job that succeeded, the tokens its last worker session trained and
-- how long that session ran. The cost estimate (api/fine_tuning/estimate.py) divides a job's tokens by the
-- recent throughput of its base model on this deployment's workers.
CREATE TABLE training_throughput (
    job_id TEXT PRIMARY KEY,
    base_model TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,
    finished_at INTEGER NOT NULL
);
CREATE INDEX training_throughput_model ON training_throughput (base_model, finished_at);

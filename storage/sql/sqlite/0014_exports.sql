-- Exports of fine-tuned models (POST /v1/fine_tuning/jobs/{id}/exports). Each row is also a task in a queue of
-- its own that the training workers lease as they lease jobs (storage/export_queue.py): claimable while queued,
-- or running under an expired lease (its worker died). `checkpoint` is the model exported (the job's fine-tuned
-- model or one of its checkpoint models); `file_id` the file of purpose `fine-tune-results` it produced.
CREATE TABLE exports (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    format TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    status TEXT NOT NULL,
    dtype TEXT,
    quantization TEXT,
    file_id TEXT,
    error TEXT,
    finished_at INTEGER,
    updated_at INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX exports_job_created ON exports (project_id, job_id, created_at, id);
CREATE INDEX exports_waiting ON exports (created_at, id) WHERE status IN ('queued', 'running');

-- Per-project rate limits and the per-project concurrent-jobs cap. A row of project_rate_limits holds what an
-- admin set for one base model of one project; a NULL column (or no row) means the deployment's default from
-- the settings, so changing a default reaches every project that never set its own.
CREATE TABLE project_rate_limits (
    project_id TEXT NOT NULL,
    model TEXT NOT NULL,
    max_requests_per_1_minute INTEGER,
    max_tokens_per_1_minute INTEGER,
    max_requests_per_1_day INTEGER,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, model)
);

-- Jobs of the project that may train at once; NULL: TUNEWRIGHT_MAX_RUNNING_JOBS_PER_PROJECT.
ALTER TABLE projects ADD COLUMN max_running_jobs INTEGER;

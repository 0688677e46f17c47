-- One number per project that changes whenever any of its jobs is created, changed or deleted, in the same
-- transaction as the change (triggers, so no write path can forget it). The API keeps rendered job-list pages
-- per process and serves one only while this number is the one it was rendered under: one indexed read
-- instead of the page query (api/fine_tuning/list_cache.py; docs/architecture.md, "Job-list pages").
-- A bump takes the larger of the next number and the clock in microseconds, so a database restored from a
-- backup never hands out again a number an API process has already cached a page under.
CREATE TABLE job_list_versions (
    project_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);

CREATE TRIGGER jobs_list_version_insert AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_list_versions (project_id, version)
    VALUES (NEW.project_id, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))
    ON CONFLICT (project_id) DO UPDATE SET version = max(version + 1, excluded.version);
END;

-- A job's project never changes (storage/metadata_jobs.py), so the project of the row is the one to bump.
CREATE TRIGGER jobs_list_version_update AFTER UPDATE ON jobs
BEGIN
    INSERT INTO job_list_versions (project_id, version)
    VALUES (NEW.project_id, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))
    ON CONFLICT (project_id) DO UPDATE SET version = max(version + 1, excluded.version);
END;

CREATE TRIGGER jobs_list_version_delete AFTER DELETE ON jobs
BEGIN
    INSERT INTO job_list_versions (project_id, version)
    VALUES (OLD.project_id, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))
    ON CONFLICT (project_id) DO UPDATE SET version = max(version + 1, excluded.version);
END;

-- One number per project that changes whenever any of its jobs is created, changed or deleted, in the same
-- transaction as the change (triggers, so no write path can forget it). The API keeps rendered job-list pages
-- per process and serves one only while this number is the one it was rendered under: one indexed read
-- instead of the page query (api/fine_tuning/list_cache.py; docs/architecture.md, "Job-list pages").
-- A bump takes the larger of the next number and the clock in microseconds, so a database restored from a
-- backup never hands out again a number an API process has already cached a page under.
CREATE TABLE job_list_versions (
    project_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);

-- A job's project never changes (storage/metadata_jobs.py), so the project of the row is the one to bump.
CREATE FUNCTION bump_job_list_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_list_versions (project_id, version)
    VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.project_id ELSE NEW.project_id END,
            (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT)
    ON CONFLICT (project_id) DO UPDATE SET version = GREATEST(job_list_versions.version + 1, EXCLUDED.version);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_list_version_insert AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION bump_job_list_version();
CREATE TRIGGER jobs_list_version_update AFTER UPDATE ON jobs
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION bump_job_list_version();
CREATE TRIGGER jobs_list_version_delete AFTER DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION bump_job_list_version();

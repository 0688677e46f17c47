-- Tunewright schema, SQLite. Keep table and column names identical to postgres/0001_initial.sql
-- (tests/storage/test_migrations.py compares them). JSON columns are TEXT; timestamps are unix seconds.
-- Tenant rows carry project_id without a foreign key to projects: the API checks the tenant, and the
-- queue and trainer tests may create jobs without tenant rows.

CREATE TABLE IF NOT EXISTS schema_migrations (
    name TEXT PRIMARY KEY,
    applied_at INTEGER NOT NULL
);

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    slug TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    archived_at INTEGER,
    external_key_id TEXT
);
CREATE INDEX projects_org_created ON projects (organization_id, created_at, id);

CREATE TABLE service_accounts (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX service_accounts_project_created ON service_accounts (project_id, created_at, id);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    project_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    redacted_value TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at INTEGER,
    service_account_id TEXT
);
CREATE INDEX api_keys_owner_created ON api_keys (organization_id, project_id, created_at, id);
CREATE INDEX api_keys_service_account ON api_keys (service_account_id);

CREATE TABLE files (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'processed',
    status_details TEXT,
    expires_at INTEGER,
    line_count INTEGER
);
CREATE INDEX files_project_created ON files (project_id, created_at, id);
CREATE INDEX files_expires ON files (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    file_id TEXT,
    file_expires_after INTEGER
);
CREATE INDEX uploads_status_created ON uploads (status, created_at);

CREATE TABLE upload_parts (
    id TEXT PRIMARY KEY,
    upload_id TEXT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    project_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    blob_key TEXT NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE INDEX upload_parts_upload_created ON upload_parts (upload_id, created_at, id);

-- jobs is also the queue: lease_owner/lease_expires_at/attempts belong to storage/queue.py.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    model TEXT NOT NULL,
    base_model TEXT NOT NULL,
    status TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    hyperparameters TEXT NOT NULL,
    method TEXT NOT NULL,
    seed INTEGER NOT NULL,
    model_slot TEXT NOT NULL,
    suffix TEXT,
    fine_tuned_model TEXT,
    finished_at INTEGER,
    trained_tokens INTEGER,
    result_files TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    metadata TEXT,
    integrations TEXT,
    estimated_finish INTEGER,
    updated_at INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_project_created ON jobs (project_id, created_at, id);

-- Round-robin fairness of the queue: when each project was last served (a row per project that ever was).
CREATE TABLE queue_turns (
    project_id TEXT PRIMARY KEY,
    last_claimed_at REAL NOT NULL
);

CREATE TABLE job_events (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    project_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    type TEXT NOT NULL DEFAULT 'message',
    data TEXT
);
CREATE INDEX job_events_job_created ON job_events (job_id, created_at, id);

CREATE TABLE checkpoints (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    project_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    step_number INTEGER NOT NULL,
    fine_tuned_model_checkpoint TEXT NOT NULL,
    metrics TEXT NOT NULL,
    blob_key TEXT NOT NULL
);
CREATE INDEX checkpoints_job_created ON checkpoints (job_id, created_at, id);

CREATE TABLE models (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    created INTEGER NOT NULL,
    owned_by TEXT NOT NULL,
    base_model TEXT NOT NULL,
    job_id TEXT NOT NULL,
    adapter_key TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'fine-tune'
);
CREATE INDEX models_project_created ON models (project_id, created, id);

CREATE TABLE permissions (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    owner_project_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (model, project_id)
);
CREATE INDEX permissions_project ON permissions (project_id);

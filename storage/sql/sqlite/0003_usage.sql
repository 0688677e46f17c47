-- One row per chat or legacy completion request: what the tenant's key used, for metering.
CREATE TABLE usage (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    api_key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    base_model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    streamed INTEGER NOT NULL CHECK (streamed IN (0, 1)),
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX usage_project_created ON usage (project_id, created_at, id);

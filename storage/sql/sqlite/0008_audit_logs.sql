-- The audit log (storage/audit.py): one row per change an API key made, written in the change's transaction.
-- organization_id is NULL only for a change to a project row that does not exist (tests that write alone);
-- actor_kind is NULL when no key acted. details holds the event's payload in OpenAI's shape for its type.
CREATE TABLE audit_logs (
    id TEXT PRIMARY KEY,
    organization_id TEXT,
    project_id TEXT,
    project_name TEXT,
    type TEXT NOT NULL,
    effective_at INTEGER NOT NULL,
    actor_kind TEXT,
    actor_key_id TEXT,
    actor_service_account_id TEXT,
    resource_id TEXT,
    details TEXT NOT NULL
);
CREATE INDEX audit_logs_org_effective ON audit_logs (organization_id, effective_at, id);
CREATE INDEX audit_logs_effective ON audit_logs (effective_at, id);

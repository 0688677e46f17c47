-- Requests made with an Idempotency-Key header (api/idempotency.py), one row per project and key. The primary
-- key is the claim: of concurrent requests with one key, in any API process, one inserts the row and does the
-- work; the others wait for its answer. While the work runs, `token` names the request that holds the claim
-- until `lease_expires_at` (renewed as it runs; a process that died lets it lapse, and a retry takes it over);
-- once answered, `fingerprint` (a digest of the request) and the answer are kept until `expires_at` (24 h),
-- when the sweeper deletes the row.
CREATE TABLE idempotency_keys (
    project_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    lease_expires_at REAL NOT NULL,
    fingerprint TEXT,
    status_code INTEGER,
    headers TEXT,
    body BLOB,
    PRIMARY KEY (project_id, idempotency_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- PostgreSQL overrides of storage/sql/queries.sql.

-- name: lock_migrations
SELECT pg_advisory_xact_lock(7470337311)

-- name: lock_tenants
-- Serializes look-up-then-insert of tenant rows across processes: project names are not unique (the admin API
-- may make two projects of one name), so no constraint can. Held until the transaction ends.
SELECT pg_advisory_xact_lock(7470337313)

-- name: notify
SELECT pg_notify(:channel, '')

-- name: lock_upload
SELECT * FROM uploads WHERE id = :id AND project_id = :project_id FOR UPDATE

-- name: list_jobs
-- {columns}: the fields of JobListingRecord, in order.
SELECT {columns} FROM jobs
WHERE project_id = :project_id
  AND (created_at, id) {cmp} (:after_created_at, :after_id)
  AND (CAST(:metadata AS JSONB) IS NULL OR jobs.metadata @> CAST(:metadata AS JSONB))
  AND (:metadata_empty = 0 OR jobs.metadata IS NULL OR jobs.metadata = '{}'::jsonb)
ORDER BY created_at {dir}, id {dir}
LIMIT :limit

-- ------------------------------------------------------------------------------------------- queue
-- storage/queue.py, PostgreSQL versions.

-- name: queue_lock
-- Claims take turns, as BEGIN IMMEDIATE makes them on SQLite: the round-robin order and the per-project cap
-- read rows that a concurrent claim is about to change. Held until the claim transaction ends.
SELECT pg_advisory_xact_lock(7470337312)

-- name: queue_pick
-- The project served longest ago (never served first), then FIFO; projects at their cap (their own, else
-- the deployment's) are skipped.
-- SKIP LOCKED steps over a job another transaction (a cancel, a heartbeat) holds; NO KEY UPDATE leaves
-- job_events inserts (FOR KEY SHARE on the job) unblocked.
SELECT j.id, j.project_id
FROM jobs AS j
LEFT JOIN queue_turns AS t ON t.project_id = j.project_id
WHERE j.status IN ('validating_files', 'queued', 'running')
  AND (j.lease_expires_at IS NULL OR j.lease_expires_at <= :now)
  AND (SELECT COUNT(*) FROM jobs AS held
       WHERE held.project_id = j.project_id
         AND held.status IN ('validating_files', 'queued', 'running')
         AND held.lease_expires_at > :now)
      < COALESCE((SELECT p.max_running_jobs FROM projects AS p WHERE p.id = j.project_id), :cap)
ORDER BY t.last_claimed_at NULLS FIRST, j.created_at, j.id
LIMIT 1
FOR NO KEY UPDATE OF j SKIP LOCKED

-- ------------------------------------------------------------------------------------------- usage

-- name: snapshot_storage
-- Each project's stored bytes now; the day keeps the most it has seen.
INSERT INTO storage_usage (project_id, day, bytes, updated_at)
SELECT project_id, :day, CAST(SUM(bytes) AS BIGINT), :now
FROM (SELECT project_id, bytes FROM files UNION ALL SELECT project_id, bytes FROM upload_parts) AS stored
GROUP BY project_id
ON CONFLICT (project_id, day) DO UPDATE
SET bytes = GREATEST(storage_usage.bytes, excluded.bytes), updated_at = excluded.updated_at

-- ---------------------------------------------------------------------------------------- webhooks
-- storage/outbox.py and storage/metadata_webhooks.py, PostgreSQL versions.

-- name: webhook_endpoints_for_event
-- FOR KEY SHARE: an endpoint deleted meanwhile waits for this transaction, then its cascade takes the new rows.
SELECT id FROM webhook_endpoints
WHERE project_id = :project_id AND event_types @> jsonb_build_array(CAST(:event_type AS TEXT))
ORDER BY created_at, id
FOR KEY SHARE

-- name: webhook_claim
-- Due deliveries without a live lease, oldest due first, leased to :owner for one attempt. SKIP LOCKED: senders
-- in several API processes claim at once and never take the same row.
UPDATE webhook_deliveries SET lease_owner = :owner, lease_expires_at = :expires_at
WHERE id IN (SELECT id FROM webhook_deliveries
             WHERE status = 'pending' AND next_attempt_at <= :now
               AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
             ORDER BY next_attempt_at, id LIMIT :limit
             FOR UPDATE SKIP LOCKED)
RETURNING *

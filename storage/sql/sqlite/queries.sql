-- SQLite overrides of storage/sql/queries.sql. BEGIN IMMEDIATE already serializes writers, so the
-- row locks of the PostgreSQL versions are not needed here.

-- name: list_jobs
-- {columns}: the fields of JobListingRecord, in order.
SELECT {columns} FROM jobs
WHERE project_id = :project_id
  AND (created_at, id) {cmp} (:after_created_at, :after_id)
  AND (:metadata IS NULL OR NOT EXISTS (
        SELECT 1 FROM json_each(:metadata) AS wanted
        WHERE NOT EXISTS (SELECT 1 FROM json_each(jobs.metadata) AS have
                          WHERE have.key = wanted.key AND have.value = wanted.value)))
  AND (:metadata_empty = 0 OR jobs.metadata IS NULL OR jobs.metadata = '{}')
ORDER BY created_at {dir}, id {dir}
LIMIT :limit

-- ------------------------------------------------------------------------------------------- queue
-- storage/queue.py, SQLite versions: the claim runs in BEGIN IMMEDIATE, which already serializes it.

-- name: queue_lock
SELECT 1

-- name: queue_pick
-- The project served longest ago (never served first), then FIFO; projects at their cap (their own, else
-- the deployment's) are skipped.
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

-- ------------------------------------------------------------------------------------------- usage

-- name: snapshot_storage
-- Each project's stored bytes now; the day keeps the most it has seen (SQLite's scalar MAX). `WHERE true`
-- tells SQLite's parser that ON CONFLICT belongs to the INSERT, not to a join.
INSERT INTO storage_usage (project_id, day, bytes, updated_at)
SELECT project_id, :day, SUM(bytes), :now
FROM (SELECT project_id, bytes FROM files UNION ALL SELECT project_id, bytes FROM upload_parts) AS stored
WHERE true
GROUP BY project_id
ON CONFLICT (project_id, day) DO UPDATE
SET bytes = MAX(storage_usage.bytes, excluded.bytes), updated_at = excluded.updated_at

-- ---------------------------------------------------------------------------------------- webhooks
-- storage/outbox.py and storage/metadata_webhooks.py, SQLite versions: writers run in BEGIN IMMEDIATE, which
-- already serializes them.

-- name: webhook_endpoints_for_event
SELECT id FROM webhook_endpoints
WHERE project_id = :project_id
  AND EXISTS (SELECT 1 FROM json_each(webhook_endpoints.event_types) WHERE value = :event_type)
ORDER BY created_at, id

-- name: webhook_claim
-- Due deliveries without a live lease, oldest due first, leased to :owner for one attempt.
UPDATE webhook_deliveries SET lease_owner = :owner, lease_expires_at = :expires_at
WHERE id IN (SELECT id FROM webhook_deliveries
             WHERE status = 'pending' AND next_attempt_at <= :now
               AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
             ORDER BY next_attempt_at, id LIMIT :limit)
RETURNING *

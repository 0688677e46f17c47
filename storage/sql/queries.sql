-- Named queries shared by both dialects; sqlite/queries.sql and postgres/queries.sql override by name.
-- Parameters are written `:name` (storage/db.py rewrites them for psycopg). A NULL-able parameter that
-- is tested with IS NULL is wrapped in CAST(... AS TEXT) so PostgreSQL knows its type.
-- List queries contain the tokens {cmp} and {dir}, filled from the list order by storage/metadata_base.py
-- ("<"/"DESC" or ">"/"ASC"); the cursor is (:after_created_at, :after_id), a sentinel on the first page.

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)

-- name: lock_migrations
SELECT 1

-- name: applied_migrations
SELECT name FROM schema_migrations ORDER BY name

-- name: record_migration
INSERT INTO schema_migrations (name, applied_at) VALUES (:name, :applied_at)

-- name: database_created_at
SELECT MIN(applied_at) AS created_at FROM schema_migrations

-- ---------------------------------------------------------------------------------------- tenants

-- name: lock_tenants
-- Taken first by the transactions that look for a tenant row and insert it if missing (`ensure_project`,
-- `create_first_tenant`). SQLite: BEGIN IMMEDIATE already serializes them.
SELECT 1

-- name: insert_organization
INSERT INTO organizations (id, name, slug, created_at) VALUES (:id, :name, :slug, :created_at)

-- name: get_organization
SELECT * FROM organizations WHERE id = :id

-- name: find_organization
SELECT * FROM organizations WHERE slug = :slug

-- name: insert_project
INSERT INTO projects (id, organization_id, name, created_at, status, archived_at, external_key_id, max_running_jobs)
VALUES (:id, :organization_id, :name, :created_at, :status, :archived_at, :external_key_id, :max_running_jobs)

-- name: get_project
SELECT * FROM projects
WHERE id = :id AND (CAST(:organization_id AS TEXT) IS NULL OR organization_id = :organization_id)

-- name: find_project
SELECT * FROM projects WHERE organization_id = :organization_id AND name = :name
ORDER BY created_at, id LIMIT 1

-- name: project_cursor
SELECT created_at, id FROM projects
WHERE id = :id AND (CAST(:organization_id AS TEXT) IS NULL OR organization_id = :organization_id)

-- name: list_projects
-- A NULL organization lists every organization's projects (the operator key without an organization header).
SELECT * FROM projects
WHERE (CAST(:organization_id AS TEXT) IS NULL OR organization_id = :organization_id)
  AND (:include_archived = 1 OR status <> 'archived')
  AND (created_at, id) {cmp} (:after_created_at, :after_id)
ORDER BY created_at {dir}, id {dir}
LIMIT :limit

-- name: list_rate_limits
SELECT * FROM project_rate_limits WHERE project_id = :project_id ORDER BY model

-- name: upsert_rate_limit
-- Only the limits sent change: a NULL parameter keeps what the row held (or the default, for a new row).
INSERT INTO project_rate_limits (project_id, model, max_requests_per_1_minute, max_tokens_per_1_minute,
                                 max_requests_per_1_day, updated_at)
VALUES (:project_id, :model, :max_requests_per_1_minute, :max_tokens_per_1_minute, :max_requests_per_1_day,
        :updated_at)
ON CONFLICT (project_id, model) DO UPDATE SET
    max_requests_per_1_minute = COALESCE(excluded.max_requests_per_1_minute,
                                         project_rate_limits.max_requests_per_1_minute),
    max_tokens_per_1_minute = COALESCE(excluded.max_tokens_per_1_minute, project_rate_limits.max_tokens_per_1_minute),
    max_requests_per_1_day = COALESCE(excluded.max_requests_per_1_day, project_rate_limits.max_requests_per_1_day),
    updated_at = excluded.updated_at
RETURNING *

-- name: insert_api_key
INSERT INTO api_keys (id, organization_id, project_id, name, kind, secret_hash, redacted_value, created_at,
                      last_used_at, revoked_at, service_account_id, expires_at, scopes)
VALUES (:id, :organization_id, :project_id, :name, :kind, :secret_hash, :redacted_value, :created_at,
        :last_used_at, :revoked_at, :service_account_id, :expires_at, :scopes)

-- name: find_api_key
SELECT * FROM api_keys WHERE secret_hash = :secret_hash

-- name: find_usable_api_key
-- Unrevoked, unexpired, of an active project (or none), and not owned by a service account without a role.
SELECT k.* FROM api_keys k LEFT JOIN projects p ON p.id = k.project_id
WHERE k.secret_hash = :secret_hash
  AND k.revoked_at IS NULL
  AND (k.expires_at IS NULL OR k.expires_at > :now)
  AND (k.project_id IS NULL OR p.status = 'active')
  AND (k.service_account_id IS NULL
       OR EXISTS (SELECT 1 FROM service_accounts s WHERE s.id = k.service_account_id AND s.role <> 'none'))

-- name: touch_api_key
UPDATE api_keys SET last_used_at = :at WHERE id = :id

-- name: api_key_cursor
SELECT created_at, id FROM api_keys
WHERE id = :id AND organization_id = :organization_id
  AND project_id IS NOT DISTINCT FROM CAST(:project_id AS TEXT)

-- name: list_api_keys
SELECT * FROM api_keys
WHERE organization_id = :organization_id
  AND project_id IS NOT DISTINCT FROM CAST(:project_id AS TEXT)
  AND revoked_at IS NULL
  AND (created_at, id) {cmp} (:after_created_at, :after_id)
ORDER BY created_at {dir}, id {dir}
LIMIT :limit

-- name: get_api_key
SELECT * FROM api_keys
WHERE id = :id AND organization_id = :organization_id
  AND project_id IS NOT DISTINCT FROM CAST(:project_id AS TEXT)
  AND revoked_at IS NULL

-- name: revoke_api_key
UPDATE api_keys SET revoked_at = :now
WHERE id = :id AND organization_id = :organization_id
  AND project_id IS NOT DISTINCT FROM CAST(:project_id AS TEXT)
  AND revoked_at IS NULL
RETURNING *

-- name: update_api_key_policy
UPDATE api_keys SET expires_at = :expires_at, scopes = :scopes
WHERE id = :id AND organization_id = :organization_id
  AND project_id IS NOT DISTINCT FROM CAST(:project_id AS TEXT)
  AND revoked_at IS NULL
RETURNING *

-- name: list_all_api_keys
SELECT * FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id

-- name: revoke_service_account_keys
UPDATE api_keys SET revoked_at = :now WHERE service_account_id = :service_account_id AND revoked_at IS NULL
RETURNING id, organization_id, project_id

-- name: insert_service_account
INSERT INTO service_accounts (id, project_id, name, role, created_at)
VALUES (:id, :project_id, :name, :role, :created_at)

-- name: service_account_cursor
SELECT created_at, id FROM service_accounts WHERE id = :id AND project_id = :project_id

-- name: list_service_accounts
SELECT * FROM service_accounts
WHERE project_id = :project_id AND (created_at, id) {cmp} (:after_created_at, :after_id)
ORDER BY created_at {dir}, id {dir}
LIMIT :limit

-- name: get_service_account
SELECT * FROM service_accounts WHERE id = :id AND project_id = :project_id

-- name: update_service_account
UPDATE service_accounts SET name = :name, role = :role WHERE id = :id AND project_id = :project_id RETURNING *

-- name: delete_service_account
DELETE FROM service_accounts WHERE id = :id AND project_id = :project_id RETURNING *

-- ------------------------------------------------------------------------------ files and uploads

-- name: insert_file
INSERT INTO files (id, project_id, bytes, created_at, filename, purpose, blob_key, sha256, status,
                   status_details, expires_at, line_count)
VALUES (:id, :project_id, :bytes, :created_at, :filename, :purpose, :blob_key, :sha256, :status,
        :status_details, :expires_at, :line_count)

-- name: get_file
SELECT * FROM files WHERE id = :id AND project_id = :project_id

-- name: file_cursor
SELECT created_at, id FROM files WHERE id = :id AND project_id = :project_id

-- name: list_files
SELECT * FROM files
WHERE project_id = :project_id
  AND (CAST(:purpose AS TEXT) IS NULL OR purpose = :purpose)
  AND (created_at, id) {cmp} (:after_created_at, :after_id)
ORDER BY created_at {dir}, id {dir}
LIMIT :limit

-- name: delete_file
DELETE FROM files WHERE id = :id AND project_id = :project_id RETURNING *

-- name: active_jobs_using_file
SELECT id FROM jobs
WHERE project_id = :project_id
  AND (training_file = :file_id OR validation_file = :file_id)
  AND status IN ('validating_files', 'queued', 'running', 'paused')
ORDER BY created_at, id

-- name: expired_files
SELECT * FROM files WHERE expires_at IS NOT NULL AND expires_at <= :now ORDER BY expires_at, id LIMIT :limit

-- name: insert_upload
INSERT INTO uploads (id, project_id, bytes, created_at, expires_at, filename, purpose, mime_type, status,
                     file_id, file_expires_after)
VALUES (:id, :project_id, :bytes, :created_at, :expires_at, :filename, :purpose, :mime_type, :status,
        :file_id, :file_expires_after)

-- name: get_upload
SELECT * FROM uploads WHERE id = :id AND project_id = :project_id

-- name: lock_upload
SELECT * FROM uploads WHERE id = :id AND project_id = :project_id

-- name: insert_upload_part
INSERT INTO upload_parts (id, upload_id, project_id, created_at, bytes, blob_key, sha256)
VALUES (:id, :upload_id, :project_id, :created_at, :bytes, :blob_key, :sha256)

-- name: list_upload_parts
SELECT * FROM upload_parts WHERE upload_id = :upload_id AND project_id = :project_id
ORDER BY created_at, id

-- name: finish_upload
UPDATE uploads SET status = :status, file_id = CAST(:file_id AS TEXT) WHERE id = :id RETURNING *

-- name: expired_uploads
SELECT * FROM uploads WHERE status = 'pending' AND created_at < :created_before
ORDER BY created_at, id LIMIT :limit

-- name: delete_upload_parts
DELETE FROM upload_parts WHERE upload_id = :upload_id AND project_id = :project_id RETURNING *

-- name: expire_upload
UPDATE uploads SET status = 'expired' WHERE id = :id AND project_id = :project_id AND status = 'pending'
RETURNING id

-- name: upload_claims
-- What an upload's declared bytes already hold: its parts, the claims of other parts in flight, this part's claim.
SELECT CAST((SELECT COALESCE(SUM(bytes), 0) FROM upload_parts WHERE upload_id = :upload_id) AS BIGINT) AS parts,
       CAST((SELECT COALESCE(SUM(bytes), 0) FROM upload_reservations
             WHERE upload_id = :upload_id AND part_id <> :part_id) AS BIGINT) AS others,
       CAST((SELECT COALESCE(SUM(bytes), 0) FROM upload_reservations WHERE part_id = :part_id) AS BIGINT) AS own

-- name: reserve_upload_bytes
INSERT INTO upload_reservations (part_id, upload_id, bytes) VALUES (:part_id, :upload_id, :bytes)
ON CONFLICT (part_id) DO UPDATE SET bytes = upload_reservations.bytes + excluded.bytes

-- name: release_upload_bytes
DELETE FROM upload_reservations WHERE part_id = :part_id

-- name: release_upload_reservations
DELETE FROM upload_reservations WHERE upload_id = :upload_id

-- ----------------------------------------------------------------------- jobs, events, checkpoints

-- name: insert_job
INSERT INTO jobs (id, project_id, organization_id, created_at, model, base_model, status, training_file,
                  validation_file, hyperparameters, method, seed, model_slot, suffix, fine_tuned_model,
                  finished_at, trained_tokens, result_files, error, metadata, integrations, estimated_finish,
                  updated_at, lease_owner, lease_expires_at, attempts)
VALUES (:id, :project_id, :organization_id, :created_at, :model, :base_model, :status, :training_file,
        :validation_file, :hyperparameters, :method, :seed, :model_slot, :suffix, :fine_tuned_model,
        :finished_at, :trained_tokens, :result_files, :error, :metadata, :integrations, :estimated_finish,
        :updated_at, :lease_owner, :lease_expires_at, :attempts)

-- name: get_job
SELECT * FROM jobs WHERE id = :id AND project_id = :project_id

-- name: job_status
SELECT status FROM jobs WHERE id = :id AND project_id = :project_id

-- name: job_cursor
SELECT created_at, id FROM jobs WHERE id = :id AND project_id = :project_id

-- name: job_list_versions
-- Bumped by triggers on jobs (migration 0012); a project without a row has had no job yet. {projects}: the ids.
SELECT project_id, version FROM job_list_versions WHERE project_id IN ({projects})

-- name: count_jobs_by_status
SELECT status, COUNT(*) AS n FROM jobs GROUP BY status

-- name: training_tokens_by_project
-- Projects in the order of their first job, so that the first ones to get their own metrics label are the oldest.
SELECT project_id, base_model, SUM(trained_tokens) AS tokens, MIN(created_at) AS first_job
FROM jobs WHERE trained_tokens IS NOT NULL
GROUP BY project_id, base_model
ORDER BY first_job, project_id, base_model

-- name: job_queue_wait_buckets
-- {bucket} is a CASE naming the bucket of `seconds` (storage/metadata_jobs.py), from fixed bounds.
SELECT {bucket} AS bucket, COUNT(*) AS n, SUM(seconds) AS total
FROM (SELECT started_at - created_at AS seconds FROM jobs WHERE started_at IS NOT NULL) AS waits
GROUP BY 1

-- name: job_duration_buckets
-- A job's duration: from its first `running` (or its creation, if it never ran) to its end.
SELECT status, {bucket} AS bucket, COUNT(*) AS n, SUM(seconds) AS total
FROM (SELECT status, finished_at - COALESCE(started_at, created_at) AS seconds FROM jobs
      WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at IS NOT NULL) AS durations
GROUP BY 1, 2

-- name: insert_event
-- Events are immutable and their ids random: the same id again is a retry of a write whose commit the server
-- applied but whose answer was lost (a worker waiting out a database outage), so it is a no-op.
INSERT INTO job_events (id, job_id, project_id, created_at, level, message, type, data)
VALUES (:id, :job_id, :project_id, :created_at, :level, :message, :type, :data)
ON CONFLICT (id) DO NOTHING

-- name: event_cursor
SELECT created_at, id FROM job_events WHERE id = :id AND job_id = :job_id AND project_id = :project_id

-- name: list_events
SELECT * FROM job_events
WHERE job_id = :job_id AND project_id = :project_id
  AND (created_at, id) {cmp} (:after_created_at, :after_id)
ORDER BY created_at {dir}, id {dir}
LIMIT :limit

-- name: insert_checkpoint
INSERT INTO checkpoints (id, job_id, project_id, created_at, step_number, fine_tuned_model_checkpoint, metrics,
                         blob_key)
VALUES (:id, :job_id, :project_id, :created_at, :step_number, :fine_tuned_model_checkpoint, :metrics, :blob_key)

-- name: checkpoint_cursor
SELECT created_at, id FROM checkpoints WHERE id = :id AND job_id = :job_id AND project_id = :project_id

-- name: list_checkpoints
SELECT * FROM checkpoints
WHERE job_id = :job_id AND project_id = :project_id
  AND (created_at, id) {cmp} (:after_created_at, :after_id)
ORDER BY created_at {dir}, id {dir}
LIMIT :limit

-- name: delete_checkpoint
DELETE FROM checkpoints WHERE id = :id AND project_id = :project_id RETURNING *

-- -------------------------------------------------------------------------- models and permissions

-- name: insert_model
INSERT INTO models (id, project_id, organization_id, created, owned_by, base_model, job_id, adapter_key, kind)
VALUES (:id, :project_id, :organization_id, :created, :owned_by, :base_model, :job_id, :adapter_key, :kind)

-- name: get_model
SELECT * FROM models
WHERE id = :id
  AND (project_id = :project_id
       OR EXISTS (SELECT 1 FROM permissions WHERE permissions.model = models.id
                  AND permissions.project_id = :project_id))

-- name: get_owned_model
SELECT * FROM models WHERE id = :id AND project_id = :project_id

-- name: list_models
SELECT * FROM models
WHERE (project_id = :project_id AND kind = 'fine-tune')
   OR EXISTS (SELECT 1 FROM permissions WHERE permissions.model = models.id
              AND permissions.project_id = :project_id)
ORDER BY created, id

-- name: delete_model
DELETE FROM models WHERE id = :id AND project_id = :project_id RETURNING *

-- name: delete_model_permissions
-- The permissions on a model and, when :job_id is set (a fine-tuned model), on its job's checkpoint models.
DELETE FROM permissions
WHERE owner_project_id = :project_id
  AND (model = :model
       OR model IN (SELECT id FROM models
                    WHERE job_id = :job_id AND project_id = :project_id AND kind = 'checkpoint'))
RETURNING *

-- name: delete_job_checkpoint_models
DELETE FROM models WHERE job_id = :job_id AND project_id = :project_id AND kind = 'checkpoint' RETURNING *

-- name: delete_job_checkpoints
DELETE FROM checkpoints WHERE job_id = :job_id AND project_id = :project_id

-- name: delete_model_checkpoint
DELETE FROM checkpoints
WHERE job_id = :job_id AND project_id = :project_id AND fine_tuned_model_checkpoint = :model

-- name: insert_permission
INSERT INTO permissions (id, model, owner_project_id, project_id, created_at)
VALUES (:id, :model, :owner_project_id, :project_id, :created_at)
ON CONFLICT (model, project_id) DO NOTHING
RETURNING id

-- name: permission_cursor
SELECT created_at, id FROM permissions
WHERE id = :id AND model = :model AND owner_project_id = :owner_project_id

-- name: list_permissions
SELECT * FROM permissions
WHERE model = :model AND owner_project_id = :owner_project_id
  AND (CAST(:project_id AS TEXT) IS NULL OR project_id = :project_id)
  AND (created_at, id) {cmp} (:after_created_at, :after_id)
ORDER BY created_at {dir}, id {dir}
LIMIT :limit

-- name: get_permission
SELECT * FROM permissions WHERE id = :id AND model = :model AND owner_project_id = :owner_project_id

-- name: delete_permission
DELETE FROM permissions WHERE id = :id AND model = :model AND owner_project_id = :owner_project_id RETURNING *

-- ------------------------------------------------------------------------------- partial updates
-- {set} is filled with `column = :set_column, …` from a whitelist of columns (storage/metadata_base.py).

-- name: update_project
UPDATE projects SET {set} WHERE id = :id AND organization_id = :organization_id RETURNING *

-- name: update_job
UPDATE jobs SET {set} WHERE id = :id AND project_id = :project_id RETURNING *

-- name: transition_job
UPDATE jobs SET {set} WHERE id = :id AND project_id = :project_id AND status IN ({allowed}) RETURNING *

-- ------------------------------------------------------------------------------------------- queue
-- storage/queue.py. Claimable: status validating_files/queued/running without a live lease. Every write
-- after a claim is guarded by (lease_owner, attempts) and a claimable status. queue_lock and queue_pick
-- differ per dialect (sqlite/queries.sql, postgres/queries.sql).

-- name: queue_take
UPDATE jobs
SET lease_owner = :worker_id, lease_expires_at = :expires_at, attempts = attempts + 1, updated_at = :updated_at
WHERE id = :id
RETURNING id, project_id, status, attempts, lease_expires_at

-- name: queue_turn
INSERT INTO queue_turns (project_id, last_claimed_at) VALUES (:project_id, :now)
ON CONFLICT (project_id) DO UPDATE SET last_claimed_at = excluded.last_claimed_at

-- name: queue_heartbeat
UPDATE jobs SET lease_expires_at = :expires_at
WHERE id = :id AND lease_owner = :worker_id AND attempts = :attempt
  AND status IN ('validating_files', 'queued', 'running')
RETURNING id

-- name: queue_finish
-- {set} holds the new status, the cleared lease, updated_at and the caller's changes (as in update_job).
UPDATE jobs
SET {set}
WHERE id = :id AND lease_owner = :worker_id AND attempts = :attempt
  AND status IN ('validating_files', 'queued', 'running')
RETURNING id

-- name: queue_mark_started
UPDATE jobs SET started_at = :now WHERE id = :id AND started_at IS NULL

-- name: queue_holder
SELECT status, lease_owner FROM jobs WHERE id = :id

-- name: queue_depth
SELECT COUNT(*) AS n FROM jobs
WHERE status IN ('validating_files', 'queued', 'running')
  AND (lease_expires_at IS NULL OR lease_expires_at <= :now)

-- ----------------------------------------------------------------------------------------- exports
-- storage/metadata_exports.py (the API's reads and inserts) and storage/export_queue.py (the workers' lease).
-- Claimable: queued, or running under an expired lease. Every write after a claim is guarded by
-- (lease_owner, attempts) and a claimable status, as a job's are.

-- name: insert_export
INSERT INTO exports (id, project_id, job_id, created_at, format, checkpoint, status, dtype, quantization, file_id,
                     error, finished_at, updated_at, lease_owner, lease_expires_at, attempts)
VALUES (:id, :project_id, :job_id, :created_at, :format, :checkpoint, :status, :dtype, :quantization, :file_id,
        :error, :finished_at, :updated_at, :lease_owner, :lease_expires_at, :attempts)

-- name: get_export
SELECT * FROM exports WHERE id = :id AND job_id = :job_id AND project_id = :project_id

-- name: export_cursor
SELECT created_at, id FROM exports WHERE id = :id AND job_id = :job_id AND project_id = :project_id

-- name: list_exports
SELECT * FROM exports
WHERE job_id = :job_id AND project_id = :project_id
  AND (created_at, id) {cmp} (:after_created_at, :after_id)
ORDER BY created_at {dir}, id {dir}
LIMIT :limit

-- name: export_pick
-- The waiting export of the project holding the fewest live export leases, then the oldest; a project at its
-- cap (its own max_running_jobs, else the deployment's) is skipped. Claims take turns (queue_lock), and nothing
-- but a worker's lease writes an export after its insert, so no row lock is needed to pick one.
SELECT id FROM (
    SELECT e.id, e.created_at,
           (SELECT COUNT(*) FROM exports AS held
            WHERE held.project_id = e.project_id AND held.status IN ('queued', 'running')
              AND held.lease_expires_at > :now) AS held,
           COALESCE((SELECT p.max_running_jobs FROM projects AS p WHERE p.id = e.project_id), :cap) AS cap
    FROM exports AS e
    WHERE e.status IN ('queued', 'running') AND (e.lease_expires_at IS NULL OR e.lease_expires_at <= :now)
) AS waiting
WHERE held < cap
ORDER BY held, created_at, id
LIMIT 1

-- name: export_take
UPDATE exports
SET lease_owner = :worker_id, lease_expires_at = :expires_at, attempts = attempts + 1, updated_at = :updated_at
WHERE id = :id
RETURNING id, project_id, job_id, status, attempts, lease_expires_at

-- name: export_heartbeat
UPDATE exports SET lease_expires_at = :expires_at
WHERE id = :id AND lease_owner = :worker_id AND attempts = :attempt AND status IN ('queued', 'running')
RETURNING id

-- name: export_finish
-- {set} holds the caller's changes and updated_at (and the cleared lease when the export is let go).
UPDATE exports
SET {set}
WHERE id = :id AND lease_owner = :worker_id AND attempts = :attempt AND status IN ('queued', 'running')
RETURNING id

-- blob intents ---------------------------------------------------------------------------------------

-- name: insert_blob_intent
-- A key written again (a job replaying a step after a crash) keeps one intent, dated by the newest write.
INSERT INTO blob_intents (key, created_at) VALUES (:key, :created_at)
ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at

-- name: delete_blob_intent
DELETE FROM blob_intents WHERE key = :key

-- name: stale_blob_intents
SELECT key FROM blob_intents WHERE created_at < :created_before ORDER BY created_at, key LIMIT :limit

-- name: get_organization_model
SELECT * FROM models
WHERE id = :id AND (CAST(:organization_id AS TEXT) IS NULL OR organization_id = :organization_id)

-- ------------------------------------------------------------------------------------------- usage

-- name: insert_usage
INSERT INTO usage (id, project_id, api_key_id, model, base_model, endpoint, streamed, prompt_tokens,
                   completion_tokens, latency_ms, created_at)
VALUES (:id, :project_id, :api_key_id, :model, :base_model, :endpoint, :streamed, :prompt_tokens,
        :completion_tokens, :latency_ms, :created_at)

-- name: list_usage
SELECT * FROM usage
WHERE project_id = :project_id AND created_at >= :created_after
ORDER BY created_at, id
LIMIT :limit

-- name: insert_training_usage
-- One row per step: a step replayed after a crash (from an older resume point) is already billed.
INSERT INTO training_usage (job_id, step, project_id, model, base_model, trained_tokens, created_at)
VALUES (:job_id, :step, :project_id, :model, :base_model, :trained_tokens, :created_at)
ON CONFLICT (job_id, step) DO NOTHING

-- name: settle_trained_tokens
-- A job that ends has trained the tokens its training usage holds (NULL when it trained no step).
UPDATE jobs
SET trained_tokens = (SELECT CAST(SUM(trained_tokens) AS BIGINT) FROM training_usage WHERE job_id = :id)
WHERE id = :id

-- name: hold_paused_job
-- Locks a paused job's row (and says whether it is still paused) before its last step is recorded.
UPDATE jobs SET updated_at = updated_at WHERE id = :id AND project_id = :project_id AND status = 'paused'
RETURNING id

-- name: list_training_usage
SELECT * FROM training_usage WHERE project_id = :project_id AND job_id = :job_id ORDER BY step

-- name: list_storage_usage
SELECT * FROM storage_usage WHERE project_id = :project_id ORDER BY day

-- The *_totals queries sum one organization's rows (every organization's when :organization_id is NULL) per
-- bucket and group. {select} is `, u.project_id AS project_id, …` and {group} `, u.project_id, …`: the grouped
-- columns, from a whitelist in storage/metadata_usage.py (or nothing); {filters} holds `AND u.model IN (…)`
-- clauses. The (project_id, created_at) indexes serve them: one range scan per project of the organization.

-- name: usage_totals
SELECT (u.created_at - :origin) / :width AS bucket{select},
       CAST(SUM(u.prompt_tokens) AS BIGINT) AS input_tokens,
       CAST(SUM(u.completion_tokens) AS BIGINT) AS output_tokens,
       COUNT(*) AS requests
FROM usage AS u JOIN projects AS p ON p.id = u.project_id
WHERE u.created_at >= :start AND u.created_at < :end
  AND (CAST(:organization_id AS TEXT) IS NULL OR p.organization_id = :organization_id){filters}
GROUP BY 1{group}
ORDER BY 1{group}

-- name: training_totals
SELECT (u.created_at - :origin) / :width AS bucket{select},
       CAST(SUM(u.trained_tokens) AS BIGINT) AS trained_tokens,
       COUNT(DISTINCT u.job_id) AS jobs
FROM training_usage AS u JOIN projects AS p ON p.id = u.project_id
WHERE u.created_at >= :start AND u.created_at < :end
  AND (CAST(:organization_id AS TEXT) IS NULL OR p.organization_id = :organization_id){filters}
GROUP BY 1{group}
ORDER BY 1{group}

-- name: storage_totals
SELECT (u.day - :origin) / :width AS bucket{select},
       CAST(SUM(u.bytes) AS BIGINT) AS byte_days
FROM storage_usage AS u JOIN projects AS p ON p.id = u.project_id
WHERE u.day >= :start AND u.day < :end
  AND (CAST(:organization_id AS TEXT) IS NULL OR p.organization_id = :organization_id){filters}
GROUP BY 1{group}
ORDER BY 1{group}

-- ---------------------------------------------------------------------------------------- webhooks
-- storage/metadata_webhooks.py and storage/outbox.py. webhook_endpoints_for_event and webhook_claim differ
-- per dialect (sqlite/queries.sql, postgres/queries.sql).

-- name: insert_webhook_endpoint
INSERT INTO webhook_endpoints (id, project_id, created_at, updated_at, name, url, event_types, secret,
                               previous_secret, previous_secret_expires_at)
VALUES (:id, :project_id, :created_at, :updated_at, :name, :url, :event_types, :secret,
        :previous_secret, :previous_secret_expires_at)

-- name: count_webhook_endpoints
SELECT COUNT(*) AS n FROM webhook_endpoints WHERE project_id = :project_id

-- name: get_webhook_endpoint
SELECT * FROM webhook_endpoints WHERE id = :id AND project_id = :project_id

-- name: webhook_endpoint_cursor
SELECT created_at, id FROM webhook_endpoints WHERE id = :id AND project_id = :project_id

-- name: list_webhook_endpoints
SELECT * FROM webhook_endpoints
WHERE project_id = :project_id AND (created_at, id) {cmp} (:after_created_at, :after_id)
ORDER BY created_at {dir}, id {dir}
LIMIT :limit

-- name: update_webhook_endpoint
UPDATE webhook_endpoints SET {set} WHERE id = :id AND project_id = :project_id RETURNING *

-- name: delete_webhook_endpoint
DELETE FROM webhook_endpoints WHERE id = :id AND project_id = :project_id RETURNING *

-- name: insert_webhook_delivery
INSERT INTO webhook_deliveries (id, endpoint_id, project_id, event_id, event_type, payload, created_at, status,
                                attempts, next_attempt_at, lease_owner, lease_expires_at, finished_at, attempt_log)
VALUES (:id, :endpoint_id, :project_id, :event_id, :event_type, :payload, :created_at, :status,
        :attempts, :next_attempt_at, :lease_owner, :lease_expires_at, :finished_at, :attempt_log)

-- name: webhook_delivery_cursor
SELECT created_at, id FROM webhook_deliveries
WHERE id = :id AND endpoint_id = :endpoint_id AND project_id = :project_id

-- name: list_webhook_deliveries
SELECT * FROM webhook_deliveries
WHERE endpoint_id = :endpoint_id AND project_id = :project_id
  AND (CAST(:status AS TEXT) IS NULL OR status = :status)
  AND (created_at, id) {cmp} (:after_created_at, :after_id)
ORDER BY created_at {dir}, id {dir}
LIMIT :limit

-- name: webhook_due
SELECT id FROM webhook_deliveries
WHERE status = 'pending' AND next_attempt_at <= :now AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
LIMIT 1

-- name: webhook_claimed_endpoints
-- {ids} is filled with the placeholders of the endpoints of the deliveries just claimed.
SELECT id, url, secret, previous_secret, previous_secret_expires_at FROM webhook_endpoints WHERE id IN ({ids})

-- name: finish_webhook_attempt
-- Only the sender holding the lease may record the attempt; a delivery whose endpoint was deleted is gone.
UPDATE webhook_deliveries
SET status = :status, attempts = attempts + 1, next_attempt_at = :next_attempt_at, lease_owner = NULL,
    lease_expires_at = NULL, finished_at = :finished_at, attempt_log = :attempt_log
WHERE id = :id AND lease_owner = :owner AND status = 'pending'
RETURNING id

-- name: release_webhook_delivery
UPDATE webhook_deliveries SET lease_owner = NULL, lease_expires_at = NULL WHERE id = :id AND lease_owner = :owner

-- name: webhook_backlog
SELECT COUNT(*) AS n FROM webhook_deliveries WHERE status = 'pending'

-- name: delete_finished_webhook_deliveries
DELETE FROM webhook_deliveries
WHERE id IN (SELECT id FROM webhook_deliveries
             WHERE status <> 'pending' AND finished_at < :finished_before
             ORDER BY finished_at, id LIMIT :limit)
RETURNING id

-- ---------------------------------------------------------------------------------------- audit log

-- name: audit_project
SELECT organization_id, name FROM projects WHERE id = :id

-- name: insert_audit_log
INSERT INTO audit_logs (id, organization_id, project_id, project_name, type, effective_at, actor_kind, actor_key_id,
                        actor_service_account_id, resource_id, details)
VALUES (:id, :organization_id, :project_id, :project_name, :type, :effective_at, :actor_kind, :actor_key_id,
        :actor_service_account_id, :resource_id, :details)

-- name: audit_log_cursor
-- A NULL organization is the operator key without an organization header: every organization's entries.
SELECT effective_at AS created_at, id FROM audit_logs
WHERE id = :id AND (CAST(:organization_id AS TEXT) IS NULL OR organization_id = :organization_id)

-- name: list_audit_logs
-- {filters} holds `AND …` clauses built from an AuditLogFilter (storage/metadata_audit.py), each with its own
-- placeholders.
SELECT {columns} FROM audit_logs
WHERE (CAST(:organization_id AS TEXT) IS NULL OR organization_id = :organization_id)
  AND (effective_at, id) {cmp} (:after_created_at, :after_id)
  {filters}
ORDER BY effective_at {dir}, id {dir}
LIMIT :limit
-- name: get_spend_limit
SELECT * FROM spend_limits WHERE project_id = :project_id

-- name: put_spend_limit
INSERT INTO spend_limits (project_id, organization_id, created_at, updated_at, threshold_amount, currency, period)
VALUES (:project_id, :organization_id, :created_at, :updated_at, :threshold_amount, :currency, :period)
ON CONFLICT (project_id) DO UPDATE SET
    updated_at = excluded.updated_at,
    threshold_amount = excluded.threshold_amount,
    currency = excluded.currency,
    period = excluded.period
RETURNING *

-- name: delete_spend_limit
DELETE FROM spend_limits WHERE project_id = :project_id RETURNING project_id

-- name: get_organization_spend_limit
SELECT * FROM organization_spend_limits WHERE organization_id = :organization_id

-- name: put_organization_spend_limit
INSERT INTO organization_spend_limits (organization_id, created_at, updated_at, threshold_amount, currency, period)
VALUES (:organization_id, :created_at, :updated_at, :threshold_amount, :currency, :period)
ON CONFLICT (organization_id) DO UPDATE SET
    updated_at = excluded.updated_at,
    threshold_amount = excluded.threshold_amount,
    currency = excluded.currency,
    period = excluded.period
RETURNING *

-- name: delete_organization_spend_limit
DELETE FROM organization_spend_limits WHERE organization_id = :organization_id RETURNING organization_id

-- name: insert_spend_alert
INSERT INTO spend_alerts (id, organization_id, project_id, created_at, updated_at, threshold_amount, currency,
                          period, notification_channel, fired_month)
VALUES (:id, :organization_id, :project_id, :created_at, :updated_at, :threshold_amount, :currency, :period,
        :notification_channel, :fired_month)

-- name: list_project_spend_alerts
SELECT * FROM spend_alerts WHERE organization_id = :organization_id AND project_id = :project_id
ORDER BY created_at, id

-- name: list_organization_spend_alerts
SELECT * FROM spend_alerts WHERE organization_id = :organization_id AND project_id IS NULL
ORDER BY created_at, id

-- name: update_spend_alert
UPDATE spend_alerts SET threshold_amount = :threshold_amount, currency = :currency, period = :period,
    notification_channel = :notification_channel, updated_at = :updated_at,
    fired_month = CASE WHEN threshold_amount = :threshold_amount THEN fired_month END
WHERE id = :id AND organization_id = :organization_id
RETURNING *

-- name: delete_spend_alert
DELETE FROM spend_alerts WHERE id = :id AND organization_id = :organization_id RETURNING id

-- name: mark_spend_alert_fired
-- Compare-and-set: of the processes that see an alert crossed in a month, one marks it and sends its webhooks.
UPDATE spend_alerts SET fired_month = :month
WHERE id = :id AND (fired_month IS NULL OR fired_month < :month)
RETURNING id

-- name: organization_project_ids
SELECT id FROM projects WHERE organization_id = :organization_id ORDER BY created_at, id

-- name: list_due_spend_alerts
SELECT * FROM spend_alerts WHERE fired_month IS NULL OR fired_month < :month ORDER BY created_at, id

-- name: insert_training_throughput
INSERT INTO training_throughput (job_id, base_model, tokens, seconds, finished_at)
VALUES (:job_id, :base_model, :tokens, :seconds, :finished_at)
ON CONFLICT (job_id) DO NOTHING

-- name: recent_training_throughput
SELECT COALESCE(SUM(tokens), 0) AS tokens, COALESCE(SUM(seconds), 0) AS seconds, COUNT(*) AS jobs
FROM (SELECT tokens, seconds FROM training_throughput WHERE base_model = :base_model
      ORDER BY finished_at DESC, job_id DESC LIMIT :jobs) AS recent

-- ------------------------------------------------------------------------------------ idempotency keys

-- name: claim_idempotency_key
-- The claim (api/idempotency.py): a new key's row, or a key whose claim lapsed (its holder died) or whose
-- answer expired, taken over. Returns the token only when this request holds the claim; otherwise the row
-- (locked by the conflict) is read with get_idempotency_key in the same transaction.
-- A lapsed claim keeps the fingerprint and `resource` its holder noted before its commit (the new holder looks
-- for that object); an expired answer keeps nothing.
INSERT INTO idempotency_keys (project_id, idempotency_key, token, created_at, expires_at, lease_expires_at)
VALUES (:project_id, :idempotency_key, :token, :created_at, :expires_at, :lease_expires_at)
ON CONFLICT (project_id, idempotency_key) DO UPDATE SET
    token = excluded.token, created_at = excluded.created_at, expires_at = excluded.expires_at,
    lease_expires_at = excluded.lease_expires_at,
    fingerprint = CASE WHEN idempotency_keys.status_code IS NULL THEN idempotency_keys.fingerprint END,
    resource = CASE WHEN idempotency_keys.status_code IS NULL THEN idempotency_keys.resource END,
    status_code = NULL, headers = NULL, body = NULL
WHERE idempotency_keys.expires_at <= :now
   OR (idempotency_keys.status_code IS NULL AND idempotency_keys.lease_expires_at <= :now)
RETURNING token, fingerprint, resource

-- name: get_idempotency_key
SELECT * FROM idempotency_keys WHERE project_id = :project_id AND idempotency_key = :idempotency_key

-- name: renew_idempotency_key
UPDATE idempotency_keys SET lease_expires_at = :lease_expires_at
WHERE project_id = :project_id AND idempotency_key = :idempotency_key AND token = :token AND status_code IS NULL
RETURNING token

-- name: note_idempotency_resource
UPDATE idempotency_keys SET fingerprint = :fingerprint, resource = :resource
WHERE project_id = :project_id AND idempotency_key = :idempotency_key AND token = :token AND status_code IS NULL
RETURNING token

-- name: complete_idempotency_key
UPDATE idempotency_keys SET fingerprint = :fingerprint, status_code = :status_code, headers = :headers,
    body = :body
WHERE project_id = :project_id AND idempotency_key = :idempotency_key AND token = :token AND status_code IS NULL
RETURNING token

-- name: release_idempotency_key
DELETE FROM idempotency_keys
WHERE project_id = :project_id AND idempotency_key = :idempotency_key AND token = :token AND status_code IS NULL
RETURNING token

-- name: delete_expired_idempotency_keys
-- Answers past their 24 h, and claims past them whose holder is gone (a live claim is never swept).
DELETE FROM idempotency_keys
WHERE (project_id, idempotency_key) IN (
    SELECT project_id, idempotency_key FROM idempotency_keys
    WHERE expires_at <= :now AND (status_code IS NOT NULL OR lease_expires_at <= :now)
    ORDER BY expires_at LIMIT :limit)
RETURNING project_id

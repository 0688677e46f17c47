"""The metadata protocols, one per feature; `MetadataStore` (storage/base.py) is all of them.

Each is implemented by the mixin of the matching `metadata_<feature>.py` module, written once against
`storage/db.py` for SQLite and PostgreSQL. Code that needs one feature can ask for its protocol alone.

Every method that touches tenant data takes a keyword-only `project_id`: tenancy is enforced here, so an object
of another project is simply `NotFound`. Methods that make a change an organization audits take a keyword-only
`actor` (the key that asked, None when none did) and record the change in the audit log in their own
transaction (storage/audit.py). Lists are newest first by `(created_at, id)` unless an `order` says
otherwise; `after` is the id of the last object of the previous page and raises `InvalidCursor` when it names no
object of that list. Writes that touch several rows happen in one transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tunewright.storage.audit import AuditActor, AuditLogFilter
    from tunewright.storage.records import (
        ApiKeyRecord,
        AuditLogRecord,
        CheckpointRecord,
        ClaimedDelivery,
        ExportRecord,
        FileRecord,
        IdempotencyRecord,
        JobEventRecord,
        JobListingRecord,
        JobRecord,
        JobTimes,
        ModelRecord,
        OrganizationRecord,
        Page,
        PermissionRecord,
        ProjectRecord,
        RateLimitRecord,
        ServiceAccountRecord,
        SpendAlertRecord,
        SpendLimitRecord,
        StorageTotal,
        StorageUsageRecord,
        ThroughputRecord,
        TrainedTokens,
        TrainingTotal,
        TrainingUsageRecord,
        UploadPartRecord,
        UploadRecord,
        UsageRecord,
        UsageTotal,
        UsageWindow,
        WebhookDeliveryRecord,
        WebhookEndpointRecord,
    )


class TenantStore(Protocol):
    """Organizations, projects, API keys and service accounts."""

    def create_organization(self, *, name: str, slug: str) -> OrganizationRecord:
        """Insert an organization. `Conflict` if the slug exists."""
        ...

    def get_organization(self, organization_id: str) -> OrganizationRecord:
        """Return one organization. `NotFound`."""
        ...

    def find_organization(self, *, slug: str) -> OrganizationRecord | None:
        """Return the organization with this slug, if any."""
        ...

    def create_project(
        self,
        *,
        organization_id: str,
        name: str,
        external_key_id: str | None = None,
        max_running_jobs: int | None = None,
        actor: AuditActor | None = None,
    ) -> ProjectRecord:
        """Insert an active project (`max_running_jobs` None: the deployment's cap applies)."""
        ...

    def ensure_project(self, *, organization_id: str, name: str, actor: AuditActor | None = None) -> ProjectRecord:
        """Return the organization's oldest project called `name`, creating one if none (atomic across processes)."""
        ...

    def create_first_tenant(
        self,
        organization: OrganizationRecord,
        project: ProjectRecord,
        key: ApiKeyRecord,
        *,
        actor: AuditActor | None = None,
    ) -> bool:
        """Insert a deployment's first organization, project and key, unless it has a tenant; return whether it did.

        A tenant already there is an unrevoked key or an organization with `organization.slug`; atomic across
        processes, so of several started at once on an empty database exactly one inserts.
        """
        ...

    def get_project(self, project_id: str, *, organization_id: str | None) -> ProjectRecord:
        """Return a project; with `organization_id`, only if it belongs to it. `NotFound`."""
        ...

    def find_project(self, *, organization_id: str, name: str) -> ProjectRecord | None:
        """Return the oldest project of this organization with this name, if any."""
        ...

    def list_projects(
        self, *, organization_id: str | None, after: str | None, limit: int, include_archived: bool
    ) -> Page[ProjectRecord]:
        """Projects of an organization (`None`: of every organization), oldest first (as OpenAI's admin lists)."""
        ...

    def update_project(
        self, project_id: str, *, organization_id: str, actor: AuditActor | None = None, **changes: Any
    ) -> ProjectRecord:
        """Set `name`, `external_key_id`, `status`, `archived_at`, `max_running_jobs`; return the new row.

        Raises `NotFound`. Audited as `project.archived` when the change archives the project, else
        `project.updated`.
        """
        ...

    def create_api_key(self, record: ApiKeyRecord, *, actor: AuditActor | None = None) -> ApiKeyRecord:
        """Insert a key row (the caller hashed the secret; `api_key.created`). `Conflict` on a duplicate hash."""
        ...

    def find_api_key(self, secret_hash: str) -> ApiKeyRecord | None:
        """Return the key with this hash (revoked ones too: the caller checks `revoked_at`)."""
        ...

    def find_usable_api_key(self, secret_hash: str, *, max_age_s: float = 0.0) -> ApiKeyRecord | None:
        """Return the key with this hash only if it is unrevoked and its project (if any) is active.

        One query: this is the lookup every authenticated request makes. With `max_age_s > 0` a usable key
        found less than that long ago may be answered from memory; changes made through this store clear
        that memory at once.
        """
        ...

    def touch_api_key(self, key_id: str, at: int) -> None:
        """Set `last_used_at`."""
        ...

    def list_api_keys(
        self, *, organization_id: str, project_id: str | None, after: str | None, limit: int, order: str = "asc"
    ) -> Page[ApiKeyRecord]:
        """Unrevoked keys of a project (or, with `project_id=None`, the organization's admin keys), by creation."""
        ...

    def get_api_key(self, key_id: str, *, organization_id: str, project_id: str | None) -> ApiKeyRecord:
        """Return one unrevoked key of the project (or admin key of the organization). `NotFound`."""
        ...

    def revoke_api_key(
        self, key_id: str, *, organization_id: str, project_id: str | None, actor: AuditActor | None = None
    ) -> ApiKeyRecord:
        """Mark a key revoked now (`api_key.deleted`); it stops working at once. `NotFound` if absent or revoked."""
        ...

    def update_api_key_policy(
        self,
        key_id: str,
        *,
        organization_id: str,
        project_id: str | None,
        expires_at: int | None,
        scopes: list[str] | None,
        changes_requested: dict[str, Any],
        actor: AuditActor | None = None,
    ) -> ApiKeyRecord:
        """Set an unrevoked key's expiry and scopes (`api_key.updated`); they apply at once. `NotFound`."""
        ...

    def list_all_api_keys(self) -> list[ApiKeyRecord]:
        """Every unrevoked key of every organization, oldest first (for the CLI)."""
        ...

    def create_service_account(
        self, record: ServiceAccountRecord, key: ApiKeyRecord | None, *, actor: AuditActor | None = None
    ) -> None:
        """Insert a service account and its first key (if any) in one transaction.

        Audited as `service_account.created` and `api_key.created`.
        """
        ...

    def update_service_account(
        self, account_id: str, *, project_id: str, name: str, role: str, actor: AuditActor | None = None
    ) -> ServiceAccountRecord:
        """Set a service account's name and role (`service_account.updated`). `NotFound`."""
        ...

    def add_service_account_key(self, key: ApiKeyRecord, *, actor: AuditActor | None = None) -> ApiKeyRecord:
        """Insert another key of an existing service account (`api_key.created`). `NotFound` if it is gone."""
        ...

    def list_service_accounts(self, *, project_id: str, after: str | None, limit: int) -> Page[ServiceAccountRecord]:
        """Service accounts of a project, oldest first."""
        ...

    def get_service_account(self, account_id: str, *, project_id: str) -> ServiceAccountRecord:
        """Return one service account. `NotFound`."""
        ...

    def delete_service_account(self, account_id: str, *, project_id: str, actor: AuditActor | None = None) -> None:
        """Delete a service account and revoke its keys. `NotFound`.

        Audited as `service_account.deleted` and one `api_key.deleted` per key revoked.
        """
        ...


class FileStore(Protocol):
    """Files, and the intents that cover a blob written before the row that makes it visible."""

    def insert_file(self, record: FileRecord) -> None:
        """Insert a file row (its blob is already fully written)."""
        ...

    def get_file(self, file_id: str, *, project_id: str) -> FileRecord:
        """Return a file of this project. `NotFound`."""
        ...

    def list_files(
        self, *, project_id: str, purpose: str | None, after: str | None, limit: int, order: str
    ) -> Page[FileRecord]:
        """Files of a project; `order` is `asc` or `desc` by `(created_at, id)`."""
        ...

    def delete_file(self, file_id: str, *, project_id: str) -> FileRecord:
        """Delete a file row and return it (the caller deletes the blob after). `NotFound`."""
        ...

    def active_jobs_using_file(self, file_id: str, *, project_id: str) -> list[str]:
        """Ids of this project's non-terminal jobs whose training or validation file is `file_id`."""
        ...

    def expired_files(self, *, now: int, limit: int) -> list[FileRecord]:
        """Files of any project whose `expires_at` has passed (for the sweeper)."""
        ...

    def begin_blob(self, key: str, *, now: int) -> None:
        """Record that `key` is about to be written, before the write starts.

        `insert_file`, `add_upload_part` and `finish_upload` clear the record of their blob in their own
        transaction, so a record that stays marks an orphan whose writer crashed.
        """
        ...

    def end_blob(self, key: str) -> None:
        """Clear the record of `key` (the failed write was cleaned up, or the sweeper deleted the blob)."""
        ...

    def stale_blobs(self, *, created_before: int, limit: int) -> list[str]:
        """Keys recorded by `begin_blob` before `created_before` and never published, oldest first."""
        ...


class UploadStore(Protocol):
    """Uploads (`/v1/uploads`) and their parts."""

    def insert_upload(self, record: UploadRecord) -> None:
        """Insert a pending upload."""
        ...

    def get_upload(self, upload_id: str, *, project_id: str) -> UploadRecord:
        """Return an upload of this project. `NotFound`."""
        ...

    def reserve_upload_bytes(self, upload_id: str, *, project_id: str, part_id: str, size: int) -> None:
        """Claim `size` more bytes of a pending upload's declared `bytes` for the part `part_id` streaming in.

        Atomic against concurrent parts: parts and claims together never exceed the declared size.
        `NotFound`; `StateConflict` if the upload is no longer pending; `LimitExceeded` beyond its `bytes`.
        """
        ...

    def release_upload_bytes(self, part_id: str) -> None:
        """Drop the claim of a part that will not be committed (having none is fine)."""
        ...

    def add_upload_part(self, record: UploadPartRecord) -> None:
        """Insert a part of a pending upload in place of its claim.

        `StateConflict` if the upload is no longer pending; `LimitExceeded` if its parts and the other parts'
        claims would then exceed its `bytes`.
        """
        ...

    def list_upload_parts(self, upload_id: str, *, project_id: str) -> list[UploadPartRecord]:
        """All parts of an upload, oldest first."""
        ...

    def finish_upload(
        self, upload_id: str, *, project_id: str, status: str, file: FileRecord | None = None
    ) -> UploadRecord:
        """Move a pending upload to `completed` (inserting `file` in the same transaction) or `cancelled`.

        Its parts' claims are dropped. `StateConflict` (with the current status) if it is not pending.
        """
        ...

    def expired_uploads(self, *, created_before: int, limit: int) -> list[UploadRecord]:
        """Pending uploads of any project created before the given time (for the sweeper)."""
        ...

    def delete_upload_parts(self, upload_id: str, *, project_id: str) -> list[UploadPartRecord]:
        """Delete the part rows of an upload and return them (the caller deletes their blobs)."""
        ...

    def expire_upload(self, upload_id: str, *, project_id: str) -> bool:
        """Move a still pending upload to `expired` (the sweeper); False if it finished meanwhile."""
        ...


class JobStore(Protocol):
    """Fine-tuning jobs, their events and their checkpoints."""

    def insert_job(self, record: JobRecord, first_event: JobEventRecord) -> None:
        """Insert a job (which queues it) and its first event in one transaction; notify waiting workers."""
        ...

    def get_job(self, job_id: str, *, project_id: str) -> JobRecord:
        """Return a job of this project. `NotFound`."""
        ...

    def list_jobs(
        self, *, project_id: str, after: str | None, limit: int, metadata: dict[str, str] | None
    ) -> Page[JobListingRecord]:
        """Jobs of a project, newest first, filtered by metadata; JSON columns left as JSON text.

        `metadata` keeps jobs whose metadata holds every pair given (an empty dict keeps jobs without metadata).
        """
        ...

    def job_list_versions(self, project_ids: Sequence[str]) -> dict[str, int]:
        """Each project's job-list version, all in one read (0 for a project that has had no job yet).

        The version is a number that changes in the same transaction as any change to the project's jobs;
        triggers on the jobs table keep it, whatever code writes the rows. Read before a `list_jobs` page, it
        tells whether a page rendered under it is still the one `list_jobs` would return.
        """
        ...

    def transition_job(
        self,
        job_id: str,
        *,
        project_id: str,
        allowed: Sequence[str],
        status: str,
        event: JobEventRecord | None = None,
        **changes: Any,
    ) -> JobRecord:
        """Compare-and-set a job's status.

        If the job's status is in `allowed`, set `status` (and `changes`, and clear the lease when the new
        status is not `running`), add `event` and the webhook deliveries the new status sends
        (`storage/outbox.py`), return the new row. A job that ends here (cancelled) gets `trained_tokens` =
        the sum of its training usage (null when it trained no step), in the same transaction.

        Raises:
            NotFound: no such job in the project.
            StateConflict: the status was not in `allowed` (`current` says what it was).
        """
        ...

    def update_job(self, job_id: str, *, project_id: str, **changes: Any) -> JobRecord:
        """Set fields of a job without a state check (trainer: hyperparameters, estimated_finish)."""
        ...

    def add_event(self, event: JobEventRecord) -> None:
        """Append an event."""
        ...

    def list_events(
        self, job_id: str, *, project_id: str, after: str | None, limit: int, order: str = "desc"
    ) -> Page[JobEventRecord]:
        """Events of a job, newest first (`order="asc"`: oldest first, for streaming)."""
        ...

    def add_checkpoint(
        self, checkpoint: CheckpointRecord, model: ModelRecord, *, published_blobs: Sequence[str] = ()
    ) -> None:
        """Insert a checkpoint and its callable model in one transaction, ending the intents of its blobs."""
        ...

    def list_checkpoints(
        self, job_id: str, *, project_id: str, after: str | None, limit: int
    ) -> Page[CheckpointRecord]:
        """Checkpoints of a job, newest first."""
        ...

    def delete_checkpoint(self, checkpoint_id: str, *, project_id: str) -> CheckpointRecord:
        """Delete a checkpoint and its model row. `NotFound`."""
        ...

    def count_jobs_by_status(self) -> dict[str, int]:
        """Jobs of all projects counted by status (for /metrics)."""
        ...

    def training_tokens_by_project(self) -> list[TrainedTokens]:
        """Tokens trained per project and base model, projects in the order of their first job (for /metrics)."""
        ...

    def job_times(self, *, wait_bounds: Sequence[int], duration_bounds: Sequence[int]) -> JobTimes:
        """Every job's queue wait and every ended job's duration by final status, in buckets (for /metrics).

        A queue wait runs from the job's creation to its first `running`; a duration from its first `running`
        (or its creation, if it never ran) to its end. Bounds are in seconds.
        """
        ...


class ExportStore(Protocol):
    """Exports of a job's models to files (the queue side, for workers, is `ExportQueue` in storage/base.py)."""

    def insert_export(self, record: ExportRecord) -> None:
        """Insert a queued export and wake the waiting workers."""
        ...

    def get_export(self, export_id: str, *, job_id: str, project_id: str) -> ExportRecord:
        """Return an export of this job of this project. `NotFound`."""
        ...

    def list_exports(self, job_id: str, *, project_id: str, after: str | None, limit: int) -> Page[ExportRecord]:
        """Exports of a job of this project, newest first. `NotFound` when the project has no such job."""
        ...


class ModelStore(Protocol):
    """Fine-tuned (and checkpoint) models and the permissions that share checkpoints."""

    def insert_model(self, record: ModelRecord) -> None:
        """Insert a fine-tuned model row."""
        ...

    def get_model(self, model_id: str, *, project_id: str) -> ModelRecord:
        """Return a model this project owns or was granted. `NotFound`."""
        ...

    def get_owned_model(self, model_id: str, *, project_id: str) -> ModelRecord:
        """Return a model this project owns. `NotFound`."""
        ...

    def get_organization_model(self, model_id: str, *, organization_id: str | None) -> ModelRecord:
        """Return a model owned by any project of the organization (`None`: of any; admin keys). `NotFound`."""
        ...

    def list_models(self, *, project_id: str) -> list[ModelRecord]:
        """Final fine-tuned models this project owns or was granted, plus granted checkpoints, oldest first."""
        ...

    def delete_model(self, model_id: str, *, project_id: str, actor: AuditActor | None = None) -> list[ModelRecord]:
        """Delete an owned model with its checkpoints and permissions; return the deleted models. `NotFound`.

        Each permission dropped with it is audited as `checkpoint.permission.deleted`.
        """
        ...

    def create_permissions(self, records: Sequence[PermissionRecord], *, actor: AuditActor | None = None) -> None:
        """Insert permissions (skipping a pair that already exists) in one transaction.

        Each new one is audited as `checkpoint.permission.created`.
        """
        ...

    def list_permissions(
        self,
        model_id: str,
        *,
        owner_project_id: str,
        project_id: str | None,
        after: str | None,
        limit: int,
        order: str,
    ) -> Page[PermissionRecord]:
        """Permissions on an owned model, `order` `asc`/`desc` by `(created_at, id)`."""
        ...

    def get_permission(self, permission_id: str, *, model_id: str, owner_project_id: str) -> PermissionRecord:
        """Return one permission. `NotFound`."""
        ...

    def delete_permission(
        self, permission_id: str, *, model_id: str, owner_project_id: str, actor: AuditActor | None = None
    ) -> PermissionRecord:
        """Delete one permission and return it (`checkpoint.permission.deleted`). `NotFound`."""
        ...


class UsageStore(Protocol):
    """Metered usage."""

    def insert_usage(self, record: UsageRecord) -> None:
        """Record one completion request's usage. Not idempotent: each call is one more metered request."""
        ...

    def list_usage(self, *, project_id: str, created_after: int = 0, limit: int = 1000) -> list[UsageRecord]:
        """A project's usage rows created at or after `created_after`, oldest first by `(created_at, id)`."""
        ...

    def keep_paused_step(self, event: JobEventRecord, usage: TrainingUsageRecord) -> bool:
        """Record the step a pause interrupted (its metrics event and usage, one transaction) if still paused."""
        ...

    def list_training_usage(self, job_id: str, *, project_id: str) -> list[TrainingUsageRecord]:
        """A job's training usage, one row per step, in step order."""
        ...

    def snapshot_storage(self, *, now: int) -> int:
        """Record every project's stored bytes for the UTC day of `now` (the day keeps its most). Idempotent."""
        ...

    def list_storage_usage(self, *, project_id: str) -> list[StorageUsageRecord]:
        """A project's daily stored bytes, oldest day first."""
        ...

    def usage_totals(self, window: UsageWindow, *, group_by: Sequence[str]) -> list[UsageTotal]:
        """Completion requests in `window` summed per bucket and group, in bucket order.

        `group_by` names any of `project_id`, `api_key_id`, `model`, `base_model`.
        """
        ...

    def training_totals(self, window: UsageWindow, *, group_by: Sequence[str]) -> list[TrainingTotal]:
        """Training steps in `window` summed per bucket and group (`project_id`, `model`, `base_model`)."""
        ...

    def storage_totals(self, window: UsageWindow, *, group_by: Sequence[str]) -> list[StorageTotal]:
        """Daily stored bytes in `window` summed per bucket and group (`project_id`), as byte-days."""
        ...


class WebhookStore(Protocol):
    """A project's webhook endpoints and the outbox of deliveries to them (written by `storage/outbox.py`)."""

    def create_webhook_endpoint(
        self, record: WebhookEndpointRecord, *, max_per_project: int, actor: AuditActor | None = None
    ) -> None:
        """Insert an endpoint (`webhook_endpoint.created`). `LimitExceeded` if the project has `max_per_project`."""
        ...

    def get_webhook_endpoint(self, endpoint_id: str, *, project_id: str) -> WebhookEndpointRecord:
        """Return an endpoint of this project. `NotFound`."""
        ...

    def list_webhook_endpoints(self, *, project_id: str, after: str | None, limit: int) -> Page[WebhookEndpointRecord]:
        """Endpoints of a project, newest first."""
        ...

    def update_webhook_endpoint(
        self, endpoint_id: str, *, project_id: str, actor: AuditActor | None = None, **changes: Any
    ) -> WebhookEndpointRecord:
        """Set `name`, `url`, `event_types`, the secrets or `updated_at`; return the new row. `NotFound`.

        Audited as `webhook_endpoint.secret_rotated` when the change sets a new secret, else
        `webhook_endpoint.updated`.
        """
        ...

    def delete_webhook_endpoint(
        self, endpoint_id: str, *, project_id: str, actor: AuditActor | None = None
    ) -> WebhookEndpointRecord:
        """Delete an endpoint and its deliveries (`webhook_endpoint.deleted`); return it. `NotFound`."""
        ...

    def list_webhook_deliveries(
        self, endpoint_id: str, *, project_id: str, status: str | None, after: str | None, limit: int
    ) -> Page[WebhookDeliveryRecord]:
        """Deliveries to an endpoint of this project, newest first (`status`: only those). `NotFound`."""
        ...

    def claim_webhook_deliveries(self, owner: str, *, now: float, lease_s: float, limit: int) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries to `owner` for one attempt; never one another sender holds."""
        ...

    def finish_webhook_attempt(
        self,
        claimed: ClaimedDelivery,
        *,
        status: str,
        next_attempt_at: float | None,
        finished_at: int | None,
        attempt: dict[str, Any],
        keep_attempts: int,
    ) -> bool:
        """Record an attempt and the delivery's new status, ending the lease. False if the lease was lost."""
        ...

    def release_webhook_delivery(self, claimed: ClaimedDelivery) -> None:
        """End a lease without recording an attempt, so the delivery is due again at once."""
        ...

    def count_webhook_backlog(self) -> int:
        """Deliveries of every project still pending (for /metrics)."""
        ...

    def delete_finished_webhook_deliveries(self, *, finished_before: int, limit: int) -> int:
        """Delete deliveries finished before `finished_before`; return how many (for the sweeper)."""
        ...


class RateLimitStore(Protocol):
    """The rate limits admins set per project and base model (defaults live in the settings, not here)."""

    def list_rate_limits(self, *, project_id: str) -> list[RateLimitRecord]:
        """The limits set for the project's models, by model; models never set have no row."""
        ...

    def set_rate_limit(
        self,
        *,
        project_id: str,
        model: str,
        max_requests_per_1_minute: int | None = None,
        max_tokens_per_1_minute: int | None = None,
        max_requests_per_1_day: int | None = None,
        actor: AuditActor | None = None,
    ) -> RateLimitRecord:
        """Set the limits given (None keeps the current value) for one model of a project; return the row.

        Audited as `rate_limit.updated`.
        """
        ...


class AuditStore(Protocol):
    """The audit log: entries are written by `storage/audit.py:record_audit` inside the changes they record."""

    def list_audit_logs(
        self,
        *,
        organization_id: str | None,
        filters: AuditLogFilter,
        after: str | None,
        before: str | None,
        limit: int,
    ) -> Page[AuditLogRecord]:
        """Entries of an organization (`None`: of every one) that pass `filters`, newest first.

        `after` pages towards older entries, `before` towards newer ones; `InvalidCursor` when the cursor is
        not an entry of the organization.
        """
        ...


class SpendStore(Protocol):
    """Spend limits and alerts (US cents a month), and the training throughput that estimates a job's duration."""

    def get_spend_limit(self, project_id: str) -> SpendLimitRecord:
        """Return a project's spend limit. `NotFound` when it has none."""
        ...

    def get_organization_spend_limit(self, organization_id: str) -> SpendLimitRecord:
        """Return an organization's own spend limit. `NotFound` when it has none."""
        ...

    def put_spend_limit(self, record: SpendLimitRecord, *, actor: AuditActor | None = None) -> SpendLimitRecord:
        """Create or replace a project's spend limit (the organization's when `record.project_id` is None).

        Keeps its `created_at`; returns the stored row.
        """
        ...

    def delete_spend_limit(self, project_id: str, *, actor: AuditActor | None = None) -> bool:
        """Remove a project's spend limit; False when it had none. Idempotent."""
        ...

    def delete_organization_spend_limit(self, organization_id: str, *, actor: AuditActor | None = None) -> bool:
        """Remove an organization's own spend limit; False when it had none. Idempotent."""
        ...

    def insert_spend_alert(self, record: SpendAlertRecord, *, actor: AuditActor | None = None) -> None:
        """Insert a spend alert."""
        ...

    def list_spend_alerts(self, *, organization_id: str, project_id: str | None) -> list[SpendAlertRecord]:
        """A project's alerts (or the organization's own when `project_id` is None), oldest first."""
        ...

    def list_due_spend_alerts(self, *, month: int) -> list[SpendAlertRecord]:
        """Every organization's alerts that have not fired for `month` (a month's first second), oldest first."""
        ...

    def update_spend_alert(self, record: SpendAlertRecord, *, actor: AuditActor | None = None) -> SpendAlertRecord:
        """Replace an alert's threshold and channel (matched by id and organization). `NotFound`."""
        ...

    def delete_spend_alert(
        self, alert_id: str, *, organization_id: str, project_id: str | None = None, actor: AuditActor | None = None
    ) -> None:
        """Delete an alert of the organization. `NotFound`."""
        ...

    def fire_spend_alert(
        self, alert: SpendAlertRecord, *, month: int, event_type: str, event_id: str, payload: str, now: float
    ) -> int | None:
        """Mark an alert fired for `month` and write its webhook deliveries atomically; None if already fired."""
        ...

    def record_throughput(self, record: ThroughputRecord) -> None:
        """Keep a job's measured training throughput. Idempotent per job."""
        ...

    def measured_throughput(self, base_model: str, *, jobs: int) -> tuple[int, float, int]:
        """`(tokens, seconds, jobs)` summed over the latest `jobs` throughput rows of a base model."""
        ...


class IdempotencyStore(Protocol):
    """Idempotency keys: one claim per project and key, then the answer kept for retries (api/idempotency.py)."""

    def claim_idempotency_key(
        self, *, project_id: str, key: str, token: str, now: float, lease_s: float, ttl_s: int
    ) -> IdempotencyRecord:
        """Claim `key` for the request `token` (new, lapsed or expired), else return the row that holds it."""
        ...

    def get_idempotency_key(self, *, project_id: str, key: str) -> IdempotencyRecord | None:
        """The key's row, or None."""
        ...

    def renew_idempotency_key(self, *, project_id: str, key: str, token: str, lease_expires_at: float) -> bool:
        """Extend the claim `token` holds; False when it holds none."""
        ...

    def note_idempotency_resource(
        self, *, project_id: str, key: str, token: str, fingerprint: str, resource: str
    ) -> bool:
        """Record the object the request `token` is about to commit; False when it no longer holds the claim."""
        ...

    def complete_idempotency_key(
        self,
        *,
        project_id: str,
        key: str,
        token: str,
        fingerprint: str,
        status_code: int,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> bool:
        """Keep the answer of the request `token`; False when it no longer holds the claim."""
        ...

    def release_idempotency_key(self, *, project_id: str, key: str, token: str) -> bool:
        """Drop the claim `token` holds without an answer; False when it held none."""
        ...

    def delete_expired_idempotency_keys(self, *, now: float, limit: int) -> int:
        """Delete expired answers and lapsed claims past their expiry; return how many."""
        ...

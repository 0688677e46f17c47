"""The storage protocols. Each has an embedded default and a production implementation.

All methods are synchronous (sqlite3, psycopg, boto3 and the trainer are); API handlers call them off the
event loop. Every MetadataStore method that touches tenant data takes a keyword-only `project_id`: tenancy is
enforced here, so an object of another project is simply `NotFound`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from tunewright.storage.records import (
        ApiKeyRecord,
        CheckpointRecord,
        Claim,
        FileRecord,
        JobEventRecord,
        JobRecord,
        ModelRecord,
        OrganizationRecord,
        Page,
        PermissionRecord,
        ProjectRecord,
        ServiceAccountRecord,
        UploadPartRecord,
        UploadRecord,
        UsageRecord,
    )
    from tunewright.storage.settings import Settings


class BlobInfo(msgspec.Struct, kw_only=True):
    """What `put` wrote: size in bytes and the SHA-256 hex digest of the content."""

    size: int
    sha256: str


class BlobStore(Protocol):
    """Opaque keys (`<project>/<kind>/<id>`) to immutable byte streams.

    Keys are relative, `/`-separated, and never contain `..` or empty segments (`InvalidKey`).
    """

    def put(self, key: str, stream: BinaryIO | Iterable[bytes], *, max_bytes: int | None = None) -> BlobInfo:
        """Store the stream under `key`, streaming (S3: multipart above the part size).

        Atomic: readers see the old object or the whole new one, never a part. Memory stays bounded by
        the chunk/part size. If `max_bytes` is given and the stream exceeds it, nothing is stored and
        `ValueError` is raised.
        """
        ...

    def open(self, key: str, *, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Yield the object's bytes in chunks. Raises `NotFound` (before the first chunk) if absent."""
        ...

    def size(self, key: str) -> int:
        """Return the object's size in bytes. Raises `NotFound`."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object. Idempotent: deleting a missing key is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix` (a folder, ending in `/`); return the count."""
        ...

    def concat(self, key: str, parts: Sequence[str]) -> BlobInfo:
        """Write the concatenation of the objects `parts` (in order) under `key`, streaming.

        Used to assemble upload parts; the parts are left in place (the caller deletes them).
        """
        ...

    def presign(self, key: str, ttl_s: int) -> str | None:
        """Return a URL that reads the object for `ttl_s` seconds, or None where the store has none."""
        ...

    def ping(self) -> None:
        """Raise `Unavailable` if the store does not answer (for /healthz)."""
        ...


class MetadataStore(Protocol):
    """Tenants, files, uploads, jobs, events, checkpoints, models and permissions.

    Lists are newest first by `(created_at, id)` unless an `order` says otherwise; `after` is the id of the
    last object of the previous page and raises `InvalidCursor` when it names no object of that list.
    Writes that touch several rows happen in one transaction.
    """

    def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied. Idempotent and safe to run concurrently."""
        ...

    def ping(self) -> None:
        """Raise `Unavailable` if the database does not answer."""
        ...

    # --- organizations, projects, keys -------------------------------------------------------------
    def create_organization(self, *, name: str, slug: str) -> OrganizationRecord:
        """Insert an organization. `Conflict` if the slug exists."""
        ...

    def get_organization(self, organization_id: str) -> OrganizationRecord:
        """Return one organization. `NotFound`."""
        ...

    def find_organization(self, *, slug: str) -> OrganizationRecord | None:
        """Return the organization with this slug, if any."""
        ...

    def create_project(self, *, organization_id: str, name: str, external_key_id: str | None = None) -> ProjectRecord:
        """Insert an active project."""
        ...

    def get_project(self, project_id: str, *, organization_id: str | None) -> ProjectRecord:
        """Return a project; with `organization_id`, only if it belongs to it. `NotFound`."""
        ...

    def find_project(self, *, organization_id: str, name: str) -> ProjectRecord | None:
        """Return the oldest project of this organization with this name, if any."""
        ...

    def list_projects(
        self, *, organization_id: str, after: str | None, limit: int, include_archived: bool
    ) -> Page[ProjectRecord]:
        """Projects of an organization, oldest first (as OpenAI's admin lists)."""
        ...

    def update_project(self, project_id: str, *, organization_id: str, **changes: Any) -> ProjectRecord:
        """Set `name`, `external_key_id`, `status`, `archived_at`; return the new row. `NotFound`."""
        ...

    def create_api_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        """Insert a key row (the caller hashed the secret). `Conflict` on a duplicate hash."""
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
        self, *, organization_id: str, project_id: str | None, after: str | None, limit: int
    ) -> Page[ApiKeyRecord]:
        """Unrevoked keys of a project (or, with `project_id=None`, the organization's admin keys), oldest first."""
        ...

    def get_api_key(self, key_id: str, *, organization_id: str, project_id: str | None) -> ApiKeyRecord:
        """Return one unrevoked key of the project (or admin key of the organization). `NotFound`."""
        ...

    def revoke_api_key(self, key_id: str, *, organization_id: str, project_id: str | None) -> ApiKeyRecord:
        """Mark a key revoked now; it stops working at once. `NotFound` if absent or already revoked."""
        ...

    def list_all_api_keys(self) -> list[ApiKeyRecord]:
        """Every unrevoked key of every organization, oldest first (for the CLI)."""
        ...

    def create_service_account(self, record: ServiceAccountRecord, key: ApiKeyRecord) -> None:
        """Insert a service account and its first key in one transaction."""
        ...

    def list_service_accounts(self, *, project_id: str, after: str | None, limit: int) -> Page[ServiceAccountRecord]:
        """Service accounts of a project, oldest first."""
        ...

    def get_service_account(self, account_id: str, *, project_id: str) -> ServiceAccountRecord:
        """Return one service account. `NotFound`."""
        ...

    def delete_service_account(self, account_id: str, *, project_id: str) -> None:
        """Delete a service account and revoke its keys. `NotFound`."""
        ...

    # --- files and uploads --------------------------------------------------------------------------
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

    def insert_upload(self, record: UploadRecord) -> None:
        """Insert a pending upload."""
        ...

    def get_upload(self, upload_id: str, *, project_id: str) -> UploadRecord:
        """Return an upload of this project. `NotFound`."""
        ...

    def add_upload_part(self, record: UploadPartRecord) -> None:
        """Insert a part of a pending upload. `StateConflict` if the upload is no longer pending."""
        ...

    def list_upload_parts(self, upload_id: str, *, project_id: str) -> list[UploadPartRecord]:
        """All parts of an upload, oldest first."""
        ...

    def finish_upload(
        self, upload_id: str, *, project_id: str, status: str, file: FileRecord | None = None
    ) -> UploadRecord:
        """Move a pending upload to `completed` (inserting `file` in the same transaction) or `cancelled`.

        `StateConflict` (with the current status) if it is not pending.
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

    # --- jobs, events, checkpoints ------------------------------------------------------------------
    def insert_job(self, record: JobRecord, first_event: JobEventRecord) -> None:
        """Insert a job (which queues it) and its first event in one transaction; notify waiting workers."""
        ...

    def get_job(self, job_id: str, *, project_id: str) -> JobRecord:
        """Return a job of this project. `NotFound`."""
        ...

    def list_jobs(
        self, *, project_id: str, after: str | None, limit: int, metadata: dict[str, str] | None
    ) -> Page[JobRecord]:
        """Jobs of a project, newest first, filtered by metadata.

        `metadata` keeps jobs whose metadata holds every pair given (an empty dict keeps jobs without metadata).
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
        status is not `running`), add `event`, return the new row.

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

    # --- models and permissions ---------------------------------------------------------------------
    def insert_model(self, record: ModelRecord) -> None:
        """Insert a fine-tuned model row."""
        ...

    def get_model(self, model_id: str, *, project_id: str) -> ModelRecord:
        """Return a model this project owns or was granted. `NotFound`."""
        ...

    def get_owned_model(self, model_id: str, *, project_id: str) -> ModelRecord:
        """Return a model this project owns. `NotFound`."""
        ...

    def get_organization_model(self, model_id: str, *, organization_id: str) -> ModelRecord:
        """Return a model owned by any project of the organization (admin keys). `NotFound`."""
        ...

    def list_models(self, *, project_id: str) -> list[ModelRecord]:
        """Final fine-tuned models this project owns or was granted, plus granted checkpoints, oldest first."""
        ...

    def delete_model(self, model_id: str, *, project_id: str) -> ModelRecord:
        """Delete an owned model and its permissions; return it. `NotFound`."""
        ...

    def create_permissions(self, records: Sequence[PermissionRecord]) -> None:
        """Insert permissions (skipping a pair that already exists) in one transaction."""
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

    def delete_permission(self, permission_id: str, *, model_id: str, owner_project_id: str) -> PermissionRecord:
        """Delete one permission and return it. `NotFound`."""
        ...

    # --- usage ------------------------------------------------------------------------------------

    def insert_usage(self, record: UsageRecord) -> None:
        """Record one completion request's usage. Not idempotent: each call is one more metered request."""
        ...

    def list_usage(self, *, project_id: str, created_after: int = 0, limit: int = 1000) -> list[UsageRecord]:
        """A project's usage rows created at or after `created_after`, oldest first by `(created_at, id)`."""
        ...


class JobQueue(Protocol):
    """Jobs waiting for a worker, in the metadata database: claim with a lease, heartbeat, release, complete.

    Claimable: status `validating_files` or `queued` with no live lease, and `running` jobs whose lease
    expired (the worker died). Fair: the project that was served longest ago goes first (round-robin across
    projects), FIFO by `(created_at, id)` inside a project; a project already running
    `max_running_per_project` jobs under live leases is skipped.
    """

    def claim(self, worker_id: str, *, lease_s: float, max_running_per_project: int) -> Claim | None:
        """Atomically take the next job for `worker_id`, or None. Sets the lease and increments `attempts`.

        The job's status is left as it was (the worker moves it to `running`); two workers never hold the
        same job.
        """
        ...

    def heartbeat(self, claim: Claim, *, lease_s: float) -> bool:
        """Extend the lease.

        False if the lease was lost (expired and taken, or the job left `running`/its claimed status by cancel
        or pause): the worker must stop.
        """
        ...

    def release(self, claim: Claim, *, status: str = "queued", event: JobEventRecord | None = None) -> bool:
        """Give the job back (status `queued` or `paused`), clearing the lease. False if the lease was lost."""
        ...

    def update(
        self, claim: Claim, *, status: str | None = None, events: Sequence[JobEventRecord] = (), **changes: Any
    ) -> bool:
        """While the lease is held: set `changes` (and `status`) and add `events`, keeping the lease. False if lost."""
        ...

    def complete(
        self,
        claim: Claim,
        *,
        status: str,
        event: JobEventRecord | None = None,
        files: Sequence[FileRecord] = (),
        models: Sequence[ModelRecord] = (),
        published_blobs: Sequence[str] = (),
        **changes: Any,
    ) -> bool:
        """Finish the job (`succeeded` or `failed`) with `changes`, clearing the lease. False if lost.

        `files` and `models` are published in the same transaction (and their blobs' intents ended).
        """
        ...

    def wait(self, timeout_s: float) -> None:
        """Block until a job may have become claimable (PostgreSQL: LISTEN) or the timeout passes."""
        ...

    def depth(self) -> int:
        """Number of jobs waiting for a worker (for /metrics)."""
        ...


class Stores(msgspec.Struct, kw_only=True):
    """The three stores a process works with."""

    blobs: BlobStore
    metadata: MetadataStore
    queue: JobQueue

    def close(self) -> None:
        """Release pooled connections."""
        for store in (self.metadata, self.queue, self.blobs):
            close = getattr(store, "close", None)
            if close is not None:
                close()


def open_stores(settings: Settings) -> Stores:
    """Open the stores the settings name: `sqlite:///…`/`postgresql://…` and `file://…`/`s3://bucket/prefix`.

    Does not migrate: callers run `stores.metadata.migrate()` where they own the schema.
    """
    from tunewright.storage.db import open_database
    from tunewright.storage.metadata import SQLMetadataStore
    from tunewright.storage.queue import SQLJobQueue

    blobs = open_blob_store(settings)  # first: if it fails, no database pool is left open
    database = open_database(settings.database_url, pool_size=settings.db_pool_size)
    return Stores(blobs=blobs, metadata=SQLMetadataStore(database), queue=SQLJobQueue(database))


def open_blob_store(settings: Settings) -> BlobStore:
    """Open the blob store named by `settings.blob_url`."""
    if settings.blob_url.startswith("s3://"):
        from tunewright.storage.s3 import S3BlobStore

        bucket, _, prefix = settings.blob_url[len("s3://") :].partition("/")
        return S3BlobStore(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            part_size=settings.s3_part_size,
        )
    from tunewright.storage.local import LocalBlobStore

    return LocalBlobStore(settings.blob_url[len("file://") :])

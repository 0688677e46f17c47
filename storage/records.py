"""Rows of the metadata store. Records never reach the wire: the API maps them to OpenAI Structs.

Timestamps are int unix seconds (the resolution OpenAI's objects carry); lease deadlines are float seconds.
JSON-shaped columns (hyperparameters, method, metadata, …) hold plain Python values.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T")


class JobStatus(StrEnum):
    """A fine-tuning job's status, as OpenAI names it (`paused` included: OpenAI returns it).

    The transitions are in docs/architecture.md "Job states".
    """

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
"""A job in one of these stays there."""
ACTIVE_STATUSES = frozenset(JobStatus) - TERMINAL_STATUSES
"""A job in one of these may still train (and may be cancelled)."""


class Page(msgspec.Struct, Generic[T], kw_only=True):
    """One page of a cursor list: the rows in list order and whether more follow."""

    items: list[T]
    has_more: bool


class OrganizationRecord(msgspec.Struct, kw_only=True):
    """An organization: the owner of projects; `slug` appears in fine-tuned model names."""

    id: str
    name: str
    slug: str
    created_at: int


class ProjectRecord(msgspec.Struct, kw_only=True):
    """A project: every tenant-owned object belongs to exactly one."""

    id: str
    organization_id: str
    name: str
    created_at: int
    status: str = "active"  # active | archived
    archived_at: int | None = None
    external_key_id: str | None = None
    max_running_jobs: int | None = None  # None: the deployment's `max_running_jobs_per_project`


class RateLimitRecord(msgspec.Struct, kw_only=True):
    """Limits an admin set for one base model of one project; None: the deployment's default."""

    project_id: str
    model: str
    max_requests_per_1_minute: int | None = None
    max_tokens_per_1_minute: int | None = None
    max_requests_per_1_day: int | None = None
    updated_at: int = 0


class ServiceAccountRecord(msgspec.Struct, kw_only=True):
    """A project's service account; its keys act like any project key."""

    id: str
    project_id: str
    name: str
    role: str
    created_at: int


class ApiKeyRecord(msgspec.Struct, kw_only=True):
    """An API key. Only the SHA-256 of the secret is stored; `redacted_value` is for display."""

    id: str
    organization_id: str
    project_id: str | None  # None for organization admin keys
    name: str
    kind: str  # project | service_account | admin
    secret_hash: str
    redacted_value: str
    created_at: int
    last_used_at: int | None = None
    revoked_at: int | None = None
    service_account_id: str | None = None
    expires_at: int | None = None  # unix seconds; None: never
    scopes: list[str] | None = None  # None or empty: all permissions (api/scopes.py)


class FileRecord(msgspec.Struct, kw_only=True):
    """A stored file; its bytes live in the blob store under `blob_key`."""

    id: str
    project_id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    blob_key: str
    sha256: str
    status: str = "processed"  # uploaded | processed | error
    status_details: str | None = None
    expires_at: int | None = None
    line_count: int | None = None


class UploadRecord(msgspec.Struct, kw_only=True):
    """A multipart upload in progress (or finished); completion yields a File."""

    id: str
    project_id: str
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    mime_type: str
    status: str = "pending"  # pending | completed | cancelled | expired
    file_id: str | None = None
    file_expires_after: int | None = None  # seconds after the File's creation, from `expires_after`


class UploadPartRecord(msgspec.Struct, kw_only=True):
    """One part of an upload, stored as its own blob until completion assembles them."""

    id: str
    upload_id: str
    project_id: str
    created_at: int
    bytes: int
    blob_key: str
    sha256: str


class JobRecord(msgspec.Struct, kw_only=True):
    """A fine-tuning job, which is also the queue entry workers claim."""

    id: str
    project_id: str
    organization_id: str
    created_at: int
    model: str  # as requested: a base model id or an ft: model
    base_model: str  # the configured base model it resolves to
    status: JobStatus
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    seed: int
    model_slot: str  # the 8 alphanumerics ending the fine-tuned model name
    suffix: str | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    result_files: list[str] = msgspec.field(default_factory=list)
    error: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    estimated_finish: int | None = None
    updated_at: int = 0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    attempts: int = 0
    started_at: int | None = None  # when it first became `running`
    best_checkpoint: str | None = None  # the checkpoint model early stopping published as `fine_tuned_model`


class JobListingRecord(msgspec.Struct, frozen=True):
    """A job as a list page shows it: the columns the wire object needs, JSON columns still JSON text.

    List pages are the API's hot path: decoding the JSON columns into Python values only for the API to encode
    them again cost more than the query, so the API copies this text to the wire as it is. Built positionally
    from the row (the list query selects these fields, in this order).
    """

    id: str
    created_at: int
    status: str
    model: str
    organization_id: str
    training_file: str
    validation_file: str | None
    seed: int
    suffix: str | None
    fine_tuned_model: str | None
    finished_at: int | None
    trained_tokens: int | None
    estimated_finish: int | None
    hyperparameters: str  # JSON text (object)
    method: str  # JSON text (object)
    result_files: str  # JSON text (array of file ids)
    error: str | None  # JSON text (object)
    metadata: str | None  # JSON text (object of strings)
    integrations: str | None  # JSON text (array)
    best_checkpoint: str | None


class JobEventRecord(msgspec.Struct, kw_only=True):
    """A `fine_tuning.job.event`."""

    id: str
    job_id: str
    project_id: str
    created_at: int
    level: str  # info | warn | error
    message: str
    type: str = "message"  # message | metrics
    data: dict[str, Any] | None = None


class CheckpointRecord(msgspec.Struct, kw_only=True):
    """A published checkpoint of a job, callable as `fine_tuned_model_checkpoint`."""

    id: str
    job_id: str
    project_id: str
    created_at: int
    step_number: int
    fine_tuned_model_checkpoint: str
    metrics: dict[str, float]
    blob_key: str


class ModelRecord(msgspec.Struct, kw_only=True):
    """A fine-tuned model or checkpoint model owned by a project."""

    id: str  # ft:<base>:<org>:<suffix>:<slot>[:ckpt-step-N]
    project_id: str
    organization_id: str
    created: int
    owned_by: str
    base_model: str
    job_id: str
    adapter_key: str
    kind: str = "fine-tune"  # fine-tune | checkpoint


class PermissionRecord(msgspec.Struct, kw_only=True):
    """A `checkpoint.permission`: `project_id` may use the owner's model `model`."""

    id: str
    model: str
    owner_project_id: str
    project_id: str
    created_at: int


class UsageRecord(msgspec.Struct, kw_only=True):
    """One chat or legacy completion request, metered: who asked, for which model, how many tokens, how fast.

    `model` is the id as requested (`ft:…` included); `endpoint` is `chat.completions` or `completions`;
    `latency_ms` runs from the request's arrival to its last token (or to the cancel of a dropped stream).
    """

    id: str
    project_id: str
    api_key_id: str
    model: str
    base_model: str
    endpoint: str
    streamed: bool
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    created_at: int


class TrainingUsageRecord(msgspec.Struct, kw_only=True):
    """One optimizer step of a fine-tuning job, metered: the tokens of the examples that step trained on.

    `model` is the job's model as requested (a base model, or the `ft:` model it continues); `base_model` is the
    configured base model it resolves to, whose training price applies. `(job_id, step)` is unique: a step
    replayed after a crash is billed once.
    """

    job_id: str
    step: int
    project_id: str
    model: str
    base_model: str
    trained_tokens: int
    created_at: int


class StorageUsageRecord(msgspec.Struct, kw_only=True):
    """The most bytes a project stored (files and upload parts) during one UTC day (`day`: its 00:00)."""

    project_id: str
    day: int
    bytes: int
    updated_at: int


class UsageWindow(msgspec.Struct, kw_only=True, frozen=True):
    """What a usage query reads: an organization (None: every one), a time range cut in buckets, filters.

    A row created at `t` with `start <= t < end` falls in bucket `(t - origin) // width`; a storage row by its
    `day`. A filter of None keeps everything; a tuple keeps the rows whose column is one of its values.
    """

    organization_id: str | None
    origin: int
    width: int
    start: int
    end: int
    project_ids: tuple[str, ...] | None = None
    api_key_ids: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None


class UsageTotal(msgspec.Struct, kw_only=True):
    """Completion requests of one bucket and group; a column not grouped by is None."""

    bucket: int
    project_id: str | None = None
    api_key_id: str | None = None
    model: str | None = None
    base_model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0


class TrainingTotal(msgspec.Struct, kw_only=True):
    """Training steps of one bucket and group: their tokens and how many jobs they belong to."""

    bucket: int
    project_id: str | None = None
    model: str | None = None
    base_model: str | None = None
    trained_tokens: int = 0
    jobs: int = 0


class StorageTotal(msgspec.Struct, kw_only=True):
    """Stored bytes of one bucket and group, summed over its days (byte-days)."""

    bucket: int
    project_id: str | None = None
    byte_days: int = 0


class WebhookEndpointRecord(msgspec.Struct, kw_only=True):
    """A project's webhook endpoint: where events go, which ones, and the secrets that sign them.

    The secrets are kept as they are (a signature needs them); `previous_secret` still signs until
    `previous_secret_expires_at` after a rotation that kept it.
    """

    id: str
    project_id: str
    created_at: int
    updated_at: int
    name: str
    url: str
    event_types: list[str]
    secret: str
    previous_secret: str | None = None
    previous_secret_expires_at: int | None = None


class WebhookDeliveryStatus(StrEnum):
    """Where one delivery stands: waiting for its next attempt, acknowledged, or given up on."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookDeliveryRecord(msgspec.Struct, kw_only=True):
    """One event to one endpoint, from the outbox: `id` is the `webhook-id` every attempt carries.

    `payload` is the exact JSON body sent on every attempt; `attempt_log` holds the latest attempts as
    `{attempted_at, status_code, error, duration_ms}`.
    """

    id: str
    endpoint_id: str
    project_id: str
    event_id: str
    event_type: str
    payload: str
    created_at: int
    status: str = WebhookDeliveryStatus.PENDING
    attempts: int = 0
    next_attempt_at: float | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    finished_at: int | None = None
    attempt_log: list[dict[str, Any]] = msgspec.field(default_factory=list)


class TimeHistogram(msgspec.Struct, kw_only=True):
    """Durations counted into buckets, as a Prometheus histogram reads them (non-cumulative here).

    `counts[i]` are the durations up to `bounds[i]` seconds (above the bound before), the last count those above
    every bound; `total_s` is their sum.
    """

    bounds: tuple[int, ...]
    counts: list[int]
    total_s: int


class JobTimes(msgspec.Struct, kw_only=True):
    """Jobs' queue waits (created to first `running`) and, by final status, their durations (for /metrics)."""

    queue_wait: TimeHistogram
    duration: dict[str, TimeHistogram]


class TrainedTokens(msgspec.Struct, kw_only=True, frozen=True):
    """Tokens trained by the jobs of one project on one base model (their `trained_tokens`)."""

    project_id: str
    base_model: str
    tokens: int


class AuditLogRecord(msgspec.Struct, kw_only=True):
    """One audit log entry (storage/audit.py): what changed (`type`, `details`), by which key, when.

    `details` is the event's payload in OpenAI's shape for its type (`{"id": …, "data": …}`, `{"id": …,
    "changes_requested": …}`); `project_name` is the project's name when the entry was written. The `actor_*`
    columns are None when no key acted (a change made straight on the store).
    """

    id: str
    organization_id: str | None
    project_id: str | None
    project_name: str | None
    type: str
    effective_at: int
    actor_kind: str | None
    actor_key_id: str | None
    actor_service_account_id: str | None
    resource_id: str | None
    details: dict[str, Any]


class ClaimedDelivery(msgspec.Struct, kw_only=True, frozen=True):
    """A delivery a sender leased for one attempt: what to send, where, and the secrets that sign it now."""

    delivery: WebhookDeliveryRecord
    url: str
    secrets: tuple[str, ...]
    owner: str


class SpendLimitRecord(msgspec.Struct, kw_only=True):
    """A hard spend limit, US cents per calendar month (UTC): a project's, or its organization's when None."""

    organization_id: str
    project_id: str | None = None
    created_at: int
    updated_at: int
    threshold_amount: int
    currency: str = "USD"
    period: str = "month"


class SpendAlertRecord(msgspec.Struct, kw_only=True):
    """A spend alert of a project, or of its organization when `project_id` is None.

    `fired_month` is the first second (UTC) of the month it last fired for: it fires once a month.
    """

    id: str
    organization_id: str
    project_id: str | None
    created_at: int
    updated_at: int
    threshold_amount: int
    notification_channel: dict[str, Any]
    currency: str = "USD"
    period: str = "month"
    fired_month: int | None = None


class ThroughputRecord(msgspec.Struct, kw_only=True, frozen=True):
    """Tokens a job's last worker session trained and the seconds it took (one row per job that succeeded)."""

    job_id: str
    base_model: str
    tokens: int
    seconds: float
    finished_at: int


class ExportStatus(StrEnum):
    """An export's status: waiting for a worker, being written, or done (`file_id` set) or failed (`error` set)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ExportRecord(msgspec.Struct, kw_only=True):
    """An export of a job's model to a file (`fine_tuning.export`), which is also the queue entry workers claim."""

    id: str
    project_id: str
    job_id: str
    created_at: int
    format: str  # adapter | merged | gguf
    checkpoint: str  # the model exported: the job's fine-tuned model or one of its checkpoint models
    status: str  # an ExportStatus
    dtype: str | None = None  # merged: f16 | bf16 | f32 (None until a worker resolves "the base model's")
    quantization: str | None = None  # gguf: f16 | q8_0
    file_id: str | None = None
    error: dict[str, Any] | None = None
    finished_at: int | None = None
    updated_at: int = 0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    attempts: int = 0


class ExportClaim(msgspec.Struct, kw_only=True):
    """A worker's hold on an export: valid while `lease_expires_at` is in the future and the owner matches."""

    export_id: str
    project_id: str
    job_id: str
    worker_id: str
    lease_expires_at: float
    attempt: int
    status: str  # the export's status when claimed (queued, or running for a reclaim)


class Claim(msgspec.Struct, kw_only=True):
    """A worker's hold on a job: valid while `lease_expires_at` is in the future and the owner matches."""

    job_id: str
    project_id: str
    worker_id: str
    lease_expires_at: float
    attempt: int
    status: JobStatus  # the job's status when claimed (validating_files, queued or running for a reclaim)


class IdempotencyRecord(msgspec.Struct, kw_only=True):
    """A request made with an `Idempotency-Key` (api/idempotency.py): its claim while it runs, then its answer.

    While the request runs, `status_code` is None and `token` names the request that holds the claim until
    `lease_expires_at`. Once it has answered, `fingerprint` (the digest of its method, path and body) tells a
    retry from another request with the same key, and `status_code`, `headers` (`[name, value]` pairs) and
    `body` are what a retry is answered, until `expires_at`. `resource` is the id of the object the request noted,
    with its fingerprint, just before committing it: what a retry answers with when the request died before its
    answer was kept.
    """

    project_id: str
    idempotency_key: str
    token: str
    created_at: int
    expires_at: int
    lease_expires_at: float
    fingerprint: str | None = None
    status_code: int | None = None
    headers: list[list[str]] | None = None
    body: bytes | None = None
    resource: str | None = None

    @property
    def answered(self) -> bool:
        """True once the request's answer is kept."""
        return self.status_code is not None

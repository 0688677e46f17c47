"""The storage protocols. Each has an embedded default and a production implementation.

`BlobStore` (local directory or S3), `MetadataStore` (SQLite or PostgreSQL; its features are the protocols of
storage/metadata_protocols.py) and `JobQueue` (in the metadata database). `storage/registry.py` opens the ones the
settings name. All methods are synchronous (sqlite3, psycopg, boto3 and the trainer are); API handlers call them
off the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import msgspec

from tunewright.storage.metadata_protocols import (
    AuditStore,
    ExportStore,
    FileStore,
    IdempotencyStore,
    JobStore,
    ModelStore,
    RateLimitStore,
    SpendStore,
    TenantStore,
    UploadStore,
    UsageStore,
    WebhookStore,
)
from tunewright.storage.records import JobStatus

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from tunewright.storage.records import (
        Claim,
        ExportClaim,
        FileRecord,
        JobEventRecord,
        ModelRecord,
        TrainingUsageRecord,
    )


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


class MetadataStore(
    TenantStore,
    FileStore,
    UploadStore,
    JobStore,
    ExportStore,
    ModelStore,
    UsageStore,
    WebhookStore,
    RateLimitStore,
    AuditStore,
    SpendStore,
    IdempotencyStore,
    Protocol,
):
    """Every metadata feature (storage/metadata_protocols.py) in one database, which it migrates and pings."""

    reads_wait_on_network: bool
    """True when a read is a round trip to a server (PostgreSQL): the API's hot read paths then run it on a
    worker thread, so the event loop serves other requests while it waits. An SQLite read costs less inline than
    the hop (bench/README.md)."""

    def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied. Idempotent and safe to run concurrently."""
        ...

    def ping(self) -> None:
        """Raise `Unavailable` if the database does not answer."""
        ...

    def database_created_at(self) -> int:
        """When the database was first migrated (unix seconds): the same for every process that opens it."""
        ...


class ExportQueue(Protocol):
    """Exports waiting for a worker, in the metadata database, leased as jobs are (storage/export_queue.py).

    Claimable: status `queued` with no live lease, and `running` exports whose lease expired (the worker died).
    The export of the project holding the fewest live export leases goes first, then the oldest; a project at
    its cap (as for jobs) is skipped.
    """

    def claim_export(self, worker_id: str, *, lease_s: float, max_running_per_project: int) -> ExportClaim | None:
        """Atomically take the next export for `worker_id`, or None. Sets the lease and increments `attempts`."""
        ...

    def heartbeat_export(self, claim: ExportClaim, *, lease_s: float) -> bool:
        """Extend the lease; False if it was lost (the worker must stop)."""
        ...

    def start_export(self, claim: ExportClaim, **changes: Any) -> bool:
        """Move the held export to `running` with its resolved `dtype`/`quantization`; False if lost."""
        ...

    def release_export(self, claim: ExportClaim) -> bool:
        """Give the export back as `queued`, clearing the lease; False if lost."""
        ...

    def complete_export(
        self,
        claim: ExportClaim,
        *,
        status: str,
        file: FileRecord | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """End the export `succeeded` (its `file` published in the same transaction) or `failed` with `error`."""
        ...


class JobQueue(ExportQueue, Protocol):
    """Jobs waiting for a worker, in the metadata database: claim with a lease, heartbeat, release, complete.

    The same queue leases exports (`ExportQueue`) to the same workers.

    Claimable: status `validating_files` or `queued` with no live lease, and `running` jobs whose lease
    expired (the worker died). Fair: the project that was served longest ago goes first (round-robin across
    projects), FIFO by `(created_at, id)` inside a project; a project already running its cap of jobs under
    live leases is skipped: its own `max_running_jobs` when set, else `max_running_per_project`.
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

    def release(
        self, claim: Claim, *, status: JobStatus = JobStatus.QUEUED, event: JobEventRecord | None = None
    ) -> bool:
        """Give the job back (status `queued` or `paused`), clearing the lease. False if the lease was lost.

        A `paused` job's webhook deliveries are written in the same transaction.
        """
        ...

    def update(
        self,
        claim: Claim,
        *,
        status: str | None = None,
        events: Sequence[JobEventRecord] = (),
        usage: TrainingUsageRecord | None = None,
        **changes: Any,
    ) -> bool:
        """While the lease is held: set `changes` (and `status`), add `events` and a step's `usage`.

        The lease is kept. False, and nothing written, if lost. A step's usage already recorded is not recorded
        again (a step replayed after a crash is billed once).
        """
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

        `files` and `models` are published in the same transaction (and their blobs' intents ended), and so
        are the webhook deliveries of the job's end (`storage/outbox.py`); `trained_tokens` is set to the sum of
        the job's training usage (null when it trained no step).
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

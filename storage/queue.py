"""SQLJobQueue: the job queue, kept in the metadata database's `jobs` table.

A job is claimable while its status is `validating_files`, `queued` or `running` and it holds no live lease:
a `running` job whose lease expired belongs to a worker that died, and the expired lease is the only
recovery path. A claim sets the lease and counts the attempt; every later write by that worker is guarded by
`(lease_owner, attempts)` and a non-terminal, unpaused status, so a worker whose lease was taken over, or
whose job the API cancelled or paused, finds its writes refused and stops.

Fairness: the project served longest ago goes first (`queue_turns.last_claimed_at`; never served first),
FIFO by `(created_at, id)` inside a project, and a project already holding its cap of live leases is skipped
(the project's own `max_running_jobs`, else `max_running_per_project`). Both the order and the cap read rows
that a concurrent claim is about to change, so claims take turns: SQLite's `BEGIN IMMEDIATE`, PostgreSQL's
transaction-scoped advisory lock (`queue_lock`). On PostgreSQL the picked job row is also locked
`FOR NO KEY UPDATE SKIP LOCKED`, so a claim steps over a job that the API is cancelling instead of waiting for it.

The SQL lives in `sql/queries.sql` and `sql/<dialect>/queries.sql` under `queue_*` names. The same object
leases exports to the same workers (storage/export_queue.py).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from tunewright.storage.db import JOBS_CHANNEL
from tunewright.storage.export_queue import ExportQueueMixin
from tunewright.storage.outbox import enqueue_job_webhooks
from tunewright.storage.records import Claim, FileRecord, JobRecord, JobStatus, ModelRecord
from tunewright.storage.rows import encode_columns, to_params

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from tunewright.storage.db import Connection, Database
    from tunewright.storage.records import JobEventRecord, TrainingUsageRecord

logger = logging.getLogger(__name__)

RELEASE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.PAUSED})
HELD_STATUSES = frozenset({JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING})
COMPLETE_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED})
# `complete(**changes)` may set any job field but its identity and what the queue itself owns.
_FIXED = frozenset({"id", "project_id", "organization_id", "created_at"})
# `trained_tokens` is the sum of the job's training usage, set by the queue when the job ends.
_QUEUE_OWNED = frozenset({"status", "lease_owner", "lease_expires_at", "attempts", "updated_at", "trained_tokens"})
CHANGEABLE_FIELDS = frozenset(JobRecord.__struct_fields__) - _FIXED - _QUEUE_OWNED


class SQLJobQueue(ExportQueueMixin):
    """The `JobQueue` over a `Database` (SQLite or PostgreSQL), written once for both; exports' lease included.

    Args:
        database: The connector the metadata store uses too: the queue is the `jobs` table.
        clock: Wall-clock seconds. Leases are compared across workers and hosts, so every worker must use
            the same (synchronized) clock; tests pass a fake one.
    """

    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._database = database
        self._clock = clock

    def claim(self, worker_id: str, *, lease_s: float, max_running_per_project: int) -> Claim | None:
        """Atomically take the next job for `worker_id`, or None; see `JobQueue.claim`."""
        now = self._clock()
        with self._database.transaction(immediate=True) as conn:
            conn.run("queue_lock")
            picked = conn.run("queue_pick", {"now": now, "cap": max_running_per_project}).fetchone()
            if picked is None:
                return None
            params = {"id": picked["id"], "worker_id": worker_id, "expires_at": now + lease_s}
            row = conn.run("queue_take", {**params, "updated_at": int(now)}).fetchone()
            conn.run("queue_turn", {"project_id": row["project_id"], "now": now})
        claim = Claim(
            job_id=row["id"],
            project_id=row["project_id"],
            worker_id=worker_id,
            lease_expires_at=float(row["lease_expires_at"]),
            attempt=int(row["attempts"]),
            status=JobStatus(row["status"]),
        )
        logger.info(
            "worker %s claimed job %s (%s, attempt %d)",
            worker_id,
            claim.job_id,
            claim.status,
            claim.attempt,
            extra={"job_id": claim.job_id},
        )
        return claim

    def heartbeat(self, claim: Claim, *, lease_s: float) -> bool:
        """Extend the lease to now + `lease_s`; False if it was lost (taken over, cancelled or paused)."""
        params = {**_guard(claim), "expires_at": self._clock() + lease_s}
        with self._database.transaction(immediate=True) as conn:
            held = conn.run("queue_heartbeat", params).fetchone() is not None
            if not held:
                _log_refused(conn, claim, what=None)
        return held

    def release(
        self, claim: Claim, *, status: JobStatus = JobStatus.QUEUED, event: JobEventRecord | None = None
    ) -> bool:
        """Give the job back as `queued` or `paused`, clearing the lease; False if the lease was lost.

        Raises:
            ValueError: `status` is neither `queued` nor `paused`.
        """
        if status not in RELEASE_STATUSES:
            raise ValueError(f"release status must be 'queued' or 'paused', not {status!r}")
        return self._finish(claim, status=status, event=event, changes={})

    def update(
        self,
        claim: Claim,
        *,
        status: str | None = None,
        events: Sequence[JobEventRecord] = (),
        usage: TrainingUsageRecord | None = None,
        **changes: Any,
    ) -> bool:
        """While `claim` holds its lease: set `changes` (and `status`, e.g. `running`), add `events` and `usage`.

        The lease is kept. False, and nothing written, if the lease was lost (taken over, cancelled or paused).
        `usage` is a finished step's training usage, written with its metrics event: a step is billed exactly
        when it is recorded, and a step recorded before (replayed after a crash) is not billed again.

        Raises:
            ValueError: `status` is not one a held job may have, or `changes` names a field that may not
                change here.
        """
        if status is not None and status not in HELD_STATUSES:
            raise ValueError(f"a held job's status must be one of {sorted(HELD_STATUSES)}, not {status!r}")
        _check_changes(changes)
        values = dict(changes)
        if status is not None:
            values["status"] = status
        return self._guarded(
            claim, values=values, events=events, clear_lease=False, what=status or "update", usage=usage
        )

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
        """Finish the job as `succeeded` or `failed` with `changes`, clearing the lease; False if lost.

        `files` and `models` (the results file, the fine-tuned model) are inserted in the same transaction,
        and the intents of their blobs (`files`' own, plus `published_blobs`) are ended there too: a job that
        lost its lease publishes nothing, and its blobs stay recorded as intents for the sweeper. The webhook
        deliveries of the job's end are written in that transaction too (`storage/outbox.py`).
        `finished_at` is set to now unless `changes` gives it; `trained_tokens` is set to the sum of the job's
        training usage (null when it trained no step), in the same transaction.

        Raises:
            ValueError: `status` is neither `succeeded` nor `failed`, or `changes` names a field that no job
                has or that may not change here (ids, created_at, status, lease, attempts, updated_at,
                trained_tokens).
        """
        if status not in COMPLETE_STATUSES:
            raise ValueError(f"complete status must be 'succeeded' or 'failed', not {status!r}")
        _check_changes(changes)
        changes.setdefault("finished_at", int(self._clock()))
        publication = _Publication(files=tuple(files), models=tuple(models), blobs=tuple(published_blobs))
        return self._finish(claim, status=status, event=event, changes=changes, publication=publication)

    def _finish(
        self,
        claim: Claim,
        *,
        status: str,
        event: JobEventRecord | None,
        changes: Mapping[str, Any],
        publication: _Publication | None = None,
    ) -> bool:
        """If `claim` still holds its lease: set `status` and `changes`, clear the lease, add `event`."""
        events = (event,) if event is not None else ()
        values = {**changes, "status": status}
        return self._guarded(
            claim, values=values, events=events, clear_lease=True, what=status, publication=publication
        )

    def _guarded(
        self,
        claim: Claim,
        *,
        values: Mapping[str, Any],
        events: Sequence[JobEventRecord],
        clear_lease: bool,
        what: str,
        publication: _Publication | None = None,
        usage: TrainingUsageRecord | None = None,
    ) -> bool:
        """One transaction: the guarded job update, then the events, usage, publication and webhooks if it matched."""
        lease = {"lease_owner": None, "lease_expires_at": None} if clear_lease else {}
        now = self._clock()
        columns = encode_columns(JobRecord, {**values, **lease, "updated_at": int(now)})
        assignments = ", ".join(f"{column} = :set_{column}" for column in columns)
        sql = self._database.query("queue_finish").replace("{set}", assignments)
        params = {**_guard(claim), **{f"set_{column}": value for column, value in columns.items()}}
        with self._database.transaction(immediate=True) as conn:
            if conn.execute(sql, params).fetchone() is None:
                _log_refused(conn, claim, what=what)
                return False
            for event in events:
                conn.run("insert_event", to_params(event))
            if usage is not None:
                conn.run("insert_training_usage", to_params(usage))
            if values.get("status") in COMPLETE_STATUSES:
                conn.run("settle_trained_tokens", {"id": claim.job_id})
            if publication is not None:
                _publish(conn, publication)
            if values.get("status") == JobStatus.RUNNING:
                conn.run("queue_mark_started", {"id": claim.job_id, "now": int(now)})
            if "status" in values:
                enqueue_job_webhooks(
                    conn, job_id=claim.job_id, project_id=claim.project_id, status=values["status"], now=now
                )
            if clear_lease:
                conn.notify(JOBS_CHANNEL)
        if clear_lease:
            logger.info("worker %s set job %s %s", claim.worker_id, claim.job_id, what, extra=_extra(claim))
        return True

    def wait(self, timeout_s: float) -> None:
        """Block until a job may have become claimable or `timeout_s` passes.

        PostgreSQL listens on `JOBS_CHANNEL`, which the metadata store notifies on insert and the queue on
        release and complete (a finished job frees a place under its project's cap). SQLite returns after
        a short poll, or at once on a wake-up from this process. Either may return early: claim in a loop.
        """
        self._database.listen(JOBS_CHANNEL, timeout_s)

    def depth(self) -> int:
        """Number of jobs waiting for a worker: claimable now, whatever the project caps."""
        with self._database.reading() as conn:
            row = conn.run("queue_depth", {"now": self._clock()}).fetchone()
        return int(row["n"])


class _Publication(msgspec.Struct, frozen=True):
    """Rows a successful job publishes with its final status, and the blobs they make reachable."""

    files: tuple[FileRecord, ...]
    models: tuple[ModelRecord, ...]
    blobs: tuple[str, ...]


def _publish(conn: Connection, publication: _Publication) -> None:
    """Insert the publication's rows and end its blobs' intents, inside the caller's transaction."""
    for file in publication.files:
        conn.run("insert_file", to_params(file))
    for model in publication.models:
        conn.run("insert_model", to_params(model))
    for key in {*publication.blobs, *(file.blob_key for file in publication.files)}:
        conn.run("delete_blob_intent", {"key": key})


def _log_refused(conn: Connection, claim: Claim, *, what: str | None) -> None:
    """Say why a guarded write was refused: a pause or cancel by the API (INFO), else a lost lease (WARNING)."""
    row = conn.run("queue_holder", {"id": claim.job_id}).fetchone()
    status, owner = (row["status"], row["lease_owner"]) if row is not None else ("deleted", None)
    before = f" (before {what})" if what else ""
    if status in ("paused", "cancelled"):
        logger.info(
            "job %s was %s: worker %s stops it%s", claim.job_id, status, claim.worker_id, before, extra=_extra(claim)
        )
        return
    held_by = f", held by {owner}" if owner else ""
    logger.warning(
        "worker %s lost its lease on job %s%s (now %s%s)",
        claim.worker_id,
        claim.job_id,
        f" before {what}" if what else "",
        status,
        held_by,
        extra=_extra(claim),
    )


def _check_changes(changes: Mapping[str, Any]) -> None:
    """Refuse job fields a worker may not set (ids, created_at, status, lease, attempts, updated_at, trained_tokens)."""
    unknown = set(changes) - CHANGEABLE_FIELDS
    if unknown:
        raise ValueError(f"cannot set {', '.join(sorted(unknown))} on a held job")


def _guard(claim: Claim) -> dict[str, Any]:
    """Parameters that match the job row only while `claim` still holds its lease."""
    return {"id": claim.job_id, "worker_id": claim.worker_id, "attempt": claim.attempt}


def _extra(claim: Claim) -> dict[str, Any]:
    """Logging context of a claim."""
    return {"job_id": claim.job_id, "worker_id": claim.worker_id}

"""Jobs, events and checkpoints of the SQL metadata store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from tunewright.storage.db import JOBS_CHANNEL
from tunewright.storage.errors import NotFound, StateConflict
from tunewright.storage.metadata_base import SQLStoreBase, now
from tunewright.storage.outbox import enqueue_job_webhooks
from tunewright.storage.records import (
    TERMINAL_STATUSES,
    CheckpointRecord,
    JobEventRecord,
    JobListingRecord,
    JobRecord,
    JobStatus,
    JobTimes,
    ModelRecord,
    Page,
    TimeHistogram,
    TrainedTokens,
)
from tunewright.storage.rows import from_row, to_params

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tunewright.storage.db import Connection

# Columns a job update may set; identity and ownership never change.
_JOB_CHANGES = frozenset(JobRecord.__struct_fields__) - {"id", "project_id", "organization_id", "created_at"}


class JobsMixin(SQLStoreBase):
    """`MetadataStore` methods for jobs, their events and checkpoints."""

    def insert_job(self, record: JobRecord, first_event: JobEventRecord) -> None:
        """Insert a job and its first event in one transaction; notify waiting workers at commit."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_job", to_params(record))
            conn.run("insert_event", to_params(first_event))
            conn.notify(JOBS_CHANNEL)

    def get_job(self, job_id: str, *, project_id: str) -> JobRecord:
        """Return a job of this project. `NotFound`."""
        with self.database.reading() as conn:
            row = conn.run("get_job", {"id": job_id, "project_id": project_id}).fetchone()
        if row is None:
            raise NotFound(job_id)
        return from_row(JobRecord, row)

    def list_jobs(
        self, *, project_id: str, after: str | None, limit: int, metadata: dict[str, str] | None
    ) -> Page[JobListingRecord]:
        """Jobs of a project, newest first, optionally filtered by metadata pairs.

        `metadata=None` keeps every job; `{}` keeps jobs without metadata; otherwise a job is kept when its
        metadata holds every pair given. `after` may name any job of the project.
        """
        filters = {
            "metadata": msgspec.json.encode(metadata).decode() if metadata else None,
            "metadata_empty": int(metadata is not None and not metadata),
        }
        with self.database.reading() as conn:
            return self._page(
                conn,
                JobListingRecord,
                query="list_jobs",
                cursor_query="job_cursor",
                scope={"project_id": project_id},
                filters=filters,
                after=after,
                limit=limit,
                order="desc",
            )

    def job_list_versions(self, project_ids: Sequence[str]) -> dict[str, int]:
        """See `JobStore.job_list_versions`."""
        params = {f"project_{i}": project_id for i, project_id in enumerate(dict.fromkeys(project_ids))}
        in_list = ", ".join(f":{name}" for name in params) or "NULL"
        sql = self.database.query("job_list_versions").replace("{projects}", in_list)
        with self.database.reading() as conn:
            _, rows = conn.fetch_tuples(sql, params)
        versions = dict.fromkeys(params.values(), 0)
        versions.update((project_id, int(version)) for project_id, version in rows)
        return versions

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
        """Compare-and-set the job's status (see `MetadataStore.transition_job`), in one transaction.

        The webhook deliveries the new status sends (cancelled, paused) are written in that transaction too.

        Raises:
            NotFound: no such job in the project.
            StateConflict: the status was not in `allowed` (`current` says what it was).
        """
        values: dict[str, Any] = {**changes, "status": status, "updated_at": now()}
        if status != JobStatus.RUNNING:
            values.update(lease_owner=None, lease_expires_at=None)
        allowed_params = {f"allowed_{i}": value for i, value in enumerate(allowed)}
        in_list = ", ".join(f":{name}" for name in allowed_params) or "NULL"
        sql = self.database.query("transition_job").replace("{allowed}", in_list)
        with self.database.transaction(immediate=True) as conn:
            where = {"id": job_id, "project_id": project_id, **allowed_params}
            record = self._update(conn, JobRecord, sql=sql, where=where, changes=values, columns=_JOB_CHANGES)
            if record is None:
                raise self._missing_or_conflict(conn, job_id, project_id)
            if event is not None:
                conn.run("insert_event", to_params(event))
            if status in TERMINAL_STATUSES:
                # A separate statement, after the row lock: it sees every step the worker committed before.
                conn.run("settle_trained_tokens", {"id": job_id})
                record = from_row(JobRecord, conn.run("get_job", {"id": job_id, "project_id": project_id}).fetchone())
            enqueue_job_webhooks(conn, job_id=job_id, project_id=project_id, status=status, now=values["updated_at"])
        return record

    @staticmethod
    def _missing_or_conflict(conn: Connection, job_id: str, project_id: str) -> NotFound | StateConflict:
        """Explain why a compare-and-set matched no row."""
        row = conn.run("job_status", {"id": job_id, "project_id": project_id}).fetchone()
        return NotFound(job_id) if row is None else StateConflict(row["status"])

    def update_job(self, job_id: str, *, project_id: str, **changes: Any) -> JobRecord:
        """Set fields of a job without a state check; `updated_at` is set too. `NotFound`."""
        values = {**changes, "updated_at": now()}
        with self.database.transaction(immediate=True) as conn:
            record = self._update(
                conn,
                JobRecord,
                sql=self.database.query("update_job"),
                where={"id": job_id, "project_id": project_id},
                changes=values,
                columns=_JOB_CHANGES,
            )
        if record is None:
            raise NotFound(job_id)
        return record

    def count_jobs_by_status(self) -> dict[str, int]:
        """Jobs of all projects counted by status."""
        with self.database.reading() as conn:
            rows = conn.run("count_jobs_by_status", {}).fetchall()
        return {row["status"]: int(row["n"]) for row in rows}

    def training_tokens_by_project(self) -> list[TrainedTokens]:
        """Tokens trained per project and base model (jobs' `trained_tokens`), projects in order of first job."""
        with self.database.reading() as conn:
            rows = conn.run("training_tokens_by_project", {}).fetchall()
        return [
            TrainedTokens(project_id=r["project_id"], base_model=r["base_model"], tokens=int(r["tokens"])) for r in rows
        ]

    def job_times(self, *, wait_bounds: Sequence[int], duration_bounds: Sequence[int]) -> JobTimes:
        """Every job's queue wait, and every ended job's duration by final status, counted into buckets."""
        with self.database.reading() as conn:
            waits = conn.execute(_bucketed(self.database.query("job_queue_wait_buckets"), wait_bounds)).fetchall()
            ends = conn.execute(_bucketed(self.database.query("job_duration_buckets"), duration_bounds)).fetchall()
        duration: dict[str, TimeHistogram] = {}
        for status in sorted({row["status"] for row in ends}):
            duration[status] = _histogram(duration_bounds, [row for row in ends if row["status"] == status])
        return JobTimes(queue_wait=_histogram(wait_bounds, waits), duration=duration)

    # --- events and checkpoints ----------------------------------------------------------------------

    def add_event(self, event: JobEventRecord) -> None:
        """Append an event."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_event", to_params(event))

    def _require_job(self, conn: Connection, job_id: str, project_id: str) -> None:
        if conn.run("job_status", {"id": job_id, "project_id": project_id}).fetchone() is None:
            raise NotFound(job_id)

    def list_events(
        self, job_id: str, *, project_id: str, after: str | None, limit: int, order: str = "desc"
    ) -> Page[JobEventRecord]:
        """Events of a job of this project, newest first (`order="asc"`: oldest first). `NotFound`."""
        with self.database.reading() as conn:
            self._require_job(conn, job_id, project_id)
            return self._page(
                conn,
                JobEventRecord,
                query="list_events",
                cursor_query="event_cursor",
                scope={"job_id": job_id, "project_id": project_id},
                after=after,
                limit=limit,
                order=order,
            )

    def add_checkpoint(
        self, checkpoint: CheckpointRecord, model: ModelRecord, *, published_blobs: Sequence[str] = ()
    ) -> None:
        """Insert a checkpoint and its callable model in one transaction, ending the intents of its blobs."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_checkpoint", to_params(checkpoint))
            conn.run("insert_model", to_params(model))
            for key in published_blobs:
                conn.run("delete_blob_intent", {"key": key})

    def list_checkpoints(
        self, job_id: str, *, project_id: str, after: str | None, limit: int
    ) -> Page[CheckpointRecord]:
        """Checkpoints of a job of this project, newest first. `NotFound`."""
        with self.database.reading() as conn:
            self._require_job(conn, job_id, project_id)
            return self._page(
                conn,
                CheckpointRecord,
                query="list_checkpoints",
                cursor_query="checkpoint_cursor",
                scope={"job_id": job_id, "project_id": project_id},
                after=after,
                limit=limit,
                order="desc",
            )

    def delete_checkpoint(self, checkpoint_id: str, *, project_id: str) -> CheckpointRecord:
        """Delete a checkpoint, its model row and that model's permissions, in one transaction. `NotFound`."""
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("delete_checkpoint", {"id": checkpoint_id, "project_id": project_id}).fetchone()
            if row is None:
                raise NotFound(checkpoint_id)
            checkpoint = from_row(CheckpointRecord, row)
            model = checkpoint.fine_tuned_model_checkpoint
            conn.run("delete_model", {"id": model, "project_id": project_id})
        return checkpoint


def _bucketed(sql: str, bounds: Sequence[int]) -> str:
    """Fill `{bucket}` with a CASE giving the index of the first bound `seconds` does not exceed."""
    cases = " ".join(f"WHEN seconds <= {int(bound)} THEN {index}" for index, bound in enumerate(bounds))
    return sql.replace("{bucket}", f"CASE {cases} ELSE {len(bounds)} END")


def _histogram(bounds: Sequence[int], rows: Sequence[Any]) -> TimeHistogram:
    counts = [0] * (len(bounds) + 1)
    for row in rows:
        counts[int(row["bucket"])] = int(row["n"])
    return TimeHistogram(bounds=tuple(bounds), counts=counts, total_s=sum(int(row["total"] or 0) for row in rows))

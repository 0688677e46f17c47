"""The exports' queue: the `exports` table, leased by the training workers as the jobs table is (storage/queue.py).

An export is claimable while it is `queued`, or `running` under an expired lease (its worker died: the expired
lease is the only recovery path, as for a job). A claim sets the lease and counts the attempt; every later write
by that worker is guarded by `(lease_owner, attempts)` and a claimable status, so a worker whose lease was taken
over finds its writes refused, and its file is never published (its blob stays an intent for the sweeper).

Fairness: the export of the project holding the fewest live export leases goes first, then the oldest; a project
holding its cap of export leases (its own `max_running_jobs`, else the deployment's) is skipped. Claims of jobs
and of exports take turns under one lock (`queue_lock`). The SQL is under `export_*` in `sql/queries.sql`.

`SQLJobQueue` (storage/queue.py) inherits these methods: the workers' one queue object holds both kinds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tunewright.storage.db import JOBS_CHANNEL
from tunewright.storage.records import ExportClaim, ExportRecord, ExportStatus
from tunewright.storage.rows import encode_columns, to_params

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from tunewright.storage.db import Database
    from tunewright.storage.records import FileRecord

logger = logging.getLogger(__name__)

EXPORT_END_STATUSES = frozenset({ExportStatus.SUCCEEDED, ExportStatus.FAILED})
_WORKER_CHANGES = frozenset({"dtype", "quantization"})
"""What a worker may set on a held export besides its status (`start_export`)."""


class ExportQueueMixin:
    """`ExportQueue` over the queue's `Database`; the class using it sets `_database` and `_clock`."""

    _database: Database
    _clock: Callable[[], float]

    def claim_export(self, worker_id: str, *, lease_s: float, max_running_per_project: int) -> ExportClaim | None:
        """Atomically take the next export for `worker_id`, or None; see `ExportQueue.claim_export`."""
        now = self._clock()
        with self._database.transaction(immediate=True) as conn:
            conn.run("queue_lock")
            picked = conn.run("export_pick", {"now": now, "cap": max_running_per_project}).fetchone()
            if picked is None:
                return None
            params = {"id": picked["id"], "worker_id": worker_id, "expires_at": now + lease_s, "updated_at": int(now)}
            row = conn.run("export_take", params).fetchone()
        claim = ExportClaim(
            export_id=row["id"],
            project_id=row["project_id"],
            job_id=row["job_id"],
            worker_id=worker_id,
            lease_expires_at=float(row["lease_expires_at"]),
            attempt=int(row["attempts"]),
            status=row["status"],
        )
        logger.info(
            "worker %s claimed export %s (%s, attempt %d)", worker_id, claim.export_id, claim.status, claim.attempt
        )
        return claim

    def heartbeat_export(self, claim: ExportClaim, *, lease_s: float) -> bool:
        """Extend the lease to now + `lease_s`; False if it was lost (taken over after it expired)."""
        params = {**_guard(claim), "expires_at": self._clock() + lease_s}
        with self._database.transaction(immediate=True) as conn:
            return conn.run("export_heartbeat", params).fetchone() is not None

    def start_export(self, claim: ExportClaim, **changes: Any) -> bool:
        """Move the held export to `running` with `changes` (its resolved `dtype`, `quantization`); False if lost.

        Raises:
            ValueError: `changes` names a field a worker may not set.
        """
        unknown = set(changes) - _WORKER_CHANGES
        if unknown:
            raise ValueError(f"cannot set {', '.join(sorted(unknown))} on a held export")
        return self._finish_export(claim, {**changes, "status": ExportStatus.RUNNING}, clear_lease=False)

    def release_export(self, claim: ExportClaim) -> bool:
        """Give the export back as `queued`, clearing the lease (the worker is stopping); False if lost."""
        return self._finish_export(claim, {"status": ExportStatus.QUEUED}, clear_lease=True)

    def complete_export(
        self,
        claim: ExportClaim,
        *,
        status: str,
        file: FileRecord | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """End the export as `succeeded` with its `file`, or `failed` with `error`, clearing the lease.

        The file row is inserted and its blob's intent ended in the same transaction, so an export that lost its
        lease publishes nothing. False, and nothing written, if the lease was lost.

        Raises:
            ValueError: `status` is neither `succeeded` nor `failed`.
        """
        if status not in EXPORT_END_STATUSES:
            raise ValueError(f"an export ends 'succeeded' or 'failed', not {status!r}")
        values = {
            "status": status,
            "file_id": file.id if file is not None else None,
            "error": error,
            "finished_at": int(self._clock()),
        }
        return self._finish_export(claim, values, clear_lease=True, file=file)

    def _finish_export(
        self, claim: ExportClaim, values: Mapping[str, Any], *, clear_lease: bool, file: FileRecord | None = None
    ) -> bool:
        """One transaction: the guarded update and, if it matched, the file's row and the end of its intent."""
        lease = {"lease_owner": None, "lease_expires_at": None} if clear_lease else {}
        columns = encode_columns(ExportRecord, {**values, **lease, "updated_at": int(self._clock())})
        assignments = ", ".join(f"{column} = :set_{column}" for column in columns)
        sql = self._database.query("export_finish").replace("{set}", assignments)
        params = {**_guard(claim), **{f"set_{column}": value for column, value in columns.items()}}
        with self._database.transaction(immediate=True) as conn:
            if conn.execute(sql, params).fetchone() is None:
                logger.warning("worker %s lost its lease on export %s", claim.worker_id, claim.export_id)
                return False
            if file is not None:
                conn.run("insert_file", to_params(file))
                conn.run("delete_blob_intent", {"key": file.blob_key})
            if clear_lease:
                conn.notify(JOBS_CHANNEL)  # a place under the project's cap is free again
        return True


def _guard(claim: ExportClaim) -> dict[str, Any]:
    """Parameters that match the export row only while `claim` still holds its lease."""
    return {"id": claim.export_id, "worker_id": claim.worker_id, "attempt": claim.attempt}

"""Usage rows of the SQL metadata store: completion requests, training steps and daily stored bytes, and their sums.

Where each row is written (docs/architecture.md "Metering"): a completion request's row after its answer
(`insert_usage`); a training step's row in the transaction that records the step (`SQLJobQueue.update`, or
`keep_paused_step` for the step a pause interrupted); a project's stored bytes by the sweeper
(`snapshot_storage`). The `*_totals` methods sum them per time bucket for the usage and costs endpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.storage.metadata_base import SQLStoreBase
from tunewright.storage.records import (
    StorageTotal,
    StorageUsageRecord,
    TrainingTotal,
    TrainingUsageRecord,
    UsageRecord,
    UsageTotal,
)
from tunewright.storage.rows import to_params

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tunewright.storage.records import JobEventRecord, UsageWindow

DAY_S = 86_400

# The columns each total may be grouped by, and the window filters each table can answer.
_GROUPS = {
    "usage_totals": ("project_id", "api_key_id", "model", "base_model"),
    "training_totals": ("project_id", "model", "base_model"),
    "storage_totals": ("project_id",),
}
_FILTERS = {
    "usage_totals": ("project_ids", "api_key_ids", "models"),
    "training_totals": ("project_ids", "models"),
    "storage_totals": ("project_ids",),
}
_FILTER_COLUMNS = {"project_ids": "project_id", "api_key_ids": "api_key_id", "models": "model"}


class UsageMixin(SQLStoreBase):
    """`MetadataStore` methods for usage rows."""

    def insert_usage(self, record: UsageRecord) -> None:
        """Insert one usage row."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_usage", to_params(record))

    def list_usage(self, *, project_id: str, created_after: int = 0, limit: int = 1000) -> list[UsageRecord]:
        """A project's usage rows created at or after `created_after`, oldest first."""
        params = {"project_id": project_id, "created_after": created_after, "limit": limit}
        with self.database.reading() as conn:
            rows = conn.run("list_usage", params).fetchall()
        return [_usage(row) for row in rows]

    def keep_paused_step(self, event: JobEventRecord, usage: TrainingUsageRecord) -> bool:
        """Record the step a pause interrupted (its metrics event and usage) if the job is still paused."""
        with self.database.transaction(immediate=True) as conn:
            if conn.run("hold_paused_job", {"id": usage.job_id, "project_id": usage.project_id}).fetchone() is None:
                return False
            conn.run("insert_event", to_params(event))
            conn.run("insert_training_usage", to_params(usage))
        return True

    def list_training_usage(self, job_id: str, *, project_id: str) -> list[TrainingUsageRecord]:
        """A job's training usage, one row per step, in step order."""
        with self.database.reading() as conn:
            rows = conn.run("list_training_usage", {"job_id": job_id, "project_id": project_id}).fetchall()
        return [TrainingUsageRecord(**row) for row in rows]

    def snapshot_storage(self, *, now: int) -> int:
        """Record each project's stored bytes for the UTC day of `now`, keeping the day's most; return the rows."""
        with self.database.transaction(immediate=True) as conn:
            cursor = conn.run("snapshot_storage", {"day": now - now % DAY_S, "now": now})
            return max(cursor.rowcount, 0)

    def list_storage_usage(self, *, project_id: str) -> list[StorageUsageRecord]:
        """A project's daily stored bytes, oldest day first."""
        with self.database.reading() as conn:
            rows = conn.run("list_storage_usage", {"project_id": project_id}).fetchall()
        return [StorageUsageRecord(**row) for row in rows]

    def usage_totals(self, window: UsageWindow, *, group_by: Sequence[str]) -> list[UsageTotal]:
        """Completion requests summed per bucket and group, in bucket order."""
        return [UsageTotal(**row) for row in self._totals("usage_totals", window, group_by)]

    def training_totals(self, window: UsageWindow, *, group_by: Sequence[str]) -> list[TrainingTotal]:
        """Training steps summed per bucket and group (with the number of distinct jobs), in bucket order."""
        return [TrainingTotal(**row) for row in self._totals("training_totals", window, group_by)]

    def storage_totals(self, window: UsageWindow, *, group_by: Sequence[str]) -> list[StorageTotal]:
        """Daily stored bytes summed per bucket and group (byte-days), in bucket order."""
        return [StorageTotal(**row) for row in self._totals("storage_totals", window, group_by)]

    def _totals(self, query: str, window: UsageWindow, group_by: Sequence[str]) -> list[dict[str, Any]]:
        """Run a `*_totals` query with its grouped columns and filters filled in.

        A filter the table cannot answer (API keys of training steps, models of stored bytes) keeps nothing.

        Raises:
            ValueError: `group_by` names a column the table cannot be grouped by.
        """
        unknown = set(group_by) - set(_GROUPS[query])
        if unknown:
            raise ValueError(f"{query} cannot be grouped by {', '.join(sorted(unknown))}")
        params: dict[str, Any] = {
            "origin": window.origin,
            "width": window.width,
            "start": window.start,
            "end": window.end,
            "organization_id": window.organization_id,
        }
        filters = []
        for name in ("project_ids", "api_key_ids", "models"):
            values = getattr(window, name)
            if values is None:
                continue
            if name not in _FILTERS[query] or not values:
                return []
            names = [f"{name}_{i}" for i in range(len(values))]
            params.update(zip(names, values, strict=True))
            filters.append(f" AND u.{_FILTER_COLUMNS[name]} IN ({', '.join(':' + n for n in names)})")
        sql = (
            self.database.query(query)
            .replace("{select}", "".join(f", u.{column} AS {column}" for column in group_by))
            .replace("{group}", "".join(f", u.{column}" for column in group_by))
            .replace("{filters}", "".join(filters))
        )
        with self.database.reading() as conn:
            return [dict(row) for row in conn.execute(sql, params).fetchall()]


def _usage(row: Any) -> UsageRecord:
    """Build a record; SQLite hands `streamed` back as 0/1."""
    return UsageRecord(**{**row, "streamed": bool(row["streamed"])})

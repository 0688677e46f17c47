"""Usage rows of the SQL metadata store: one per chat or legacy completion request, for metering."""

from __future__ import annotations

from typing import Any

from tunewright.storage.metadata_base import SQLStoreBase
from tunewright.storage.records import UsageRecord
from tunewright.storage.rows import to_params


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


def _usage(row: Any) -> UsageRecord:
    """Build a record; SQLite hands `streamed` back as 0/1."""
    return UsageRecord(**{**row, "streamed": bool(row["streamed"])})

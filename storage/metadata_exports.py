"""Exports of the SQL metadata store: what the API inserts and reads (the workers' side is storage/export_queue.py)."""

from __future__ import annotations

from tunewright.storage.db import JOBS_CHANNEL
from tunewright.storage.errors import NotFound
from tunewright.storage.metadata_base import SQLStoreBase
from tunewright.storage.records import ExportRecord, Page
from tunewright.storage.rows import from_row, to_params


class ExportsMixin(SQLStoreBase):
    """`MetadataStore` methods for the exports of a job's models."""

    def insert_export(self, record: ExportRecord) -> None:
        """Insert a queued export; wake the waiting workers at commit (they listen on the jobs' channel)."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_export", to_params(record))
            conn.notify(JOBS_CHANNEL)

    def get_export(self, export_id: str, *, job_id: str, project_id: str) -> ExportRecord:
        """Return an export of this job of this project. `NotFound`."""
        with self.database.reading() as conn:
            row = conn.run("get_export", {"id": export_id, "job_id": job_id, "project_id": project_id}).fetchone()
        if row is None:
            raise NotFound(export_id)
        return from_row(ExportRecord, row)

    def list_exports(self, job_id: str, *, project_id: str, after: str | None, limit: int) -> Page[ExportRecord]:
        """Exports of a job of this project, newest first. `NotFound` when the project has no such job."""
        with self.database.reading() as conn:
            if conn.run("job_status", {"id": job_id, "project_id": project_id}).fetchone() is None:
                raise NotFound(job_id)
            return self._page(
                conn,
                ExportRecord,
                query="list_exports",
                cursor_query="export_cursor",
                scope={"job_id": job_id, "project_id": project_id},
                after=after,
                limit=limit,
                order="desc",
            )

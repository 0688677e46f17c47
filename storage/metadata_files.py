"""Files and multipart uploads of the SQL metadata store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.storage.errors import LimitExceeded, NotFound, StateConflict
from tunewright.storage.metadata_base import SQLStoreBase
from tunewright.storage.records import FileRecord, Page, UploadPartRecord, UploadRecord
from tunewright.storage.rows import from_row, to_params

if TYPE_CHECKING:
    from tunewright.storage.db import Connection

_FINISHED = ("completed", "cancelled")


class FilesMixin(SQLStoreBase):
    """`MetadataStore` methods for files and uploads."""

    def insert_file(self, record: FileRecord) -> None:
        """Insert a file row (its blob is already fully written)."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_file", to_params(record))
            conn.run("delete_blob_intent", {"key": record.blob_key})

    def get_file(self, file_id: str, *, project_id: str) -> FileRecord:
        """Return a file of this project. `NotFound`."""
        with self.database.reading() as conn:
            row = conn.run("get_file", {"id": file_id, "project_id": project_id}).fetchone()
        if row is None:
            raise NotFound(file_id)
        return from_row(FileRecord, row)

    def list_files(
        self, *, project_id: str, purpose: str | None, after: str | None, limit: int, order: str
    ) -> Page[FileRecord]:
        """Files of a project; `order` is `asc` or `desc` by `(created_at, id)`.

        `after` may name any file of the project (of any purpose), else `InvalidCursor`.
        """
        with self.database.reading() as conn:
            return self._page(
                conn,
                FileRecord,
                query="list_files",
                cursor_query="file_cursor",
                scope={"project_id": project_id},
                filters={"purpose": purpose},
                after=after,
                limit=limit,
                order=order,
            )

    def delete_file(self, file_id: str, *, project_id: str) -> FileRecord:
        """Delete a file row and return it (the caller deletes the blob after). `NotFound`."""
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("delete_file", {"id": file_id, "project_id": project_id}).fetchone()
        if row is None:
            raise NotFound(file_id)
        return from_row(FileRecord, row)

    def active_jobs_using_file(self, file_id: str, *, project_id: str) -> list[str]:
        """Ids of this project's non-terminal jobs whose training or validation file is `file_id`."""
        with self.database.reading() as conn:
            rows = conn.run("active_jobs_using_file", {"file_id": file_id, "project_id": project_id}).fetchall()
        return [row["id"] for row in rows]

    def expired_files(self, *, now: int, limit: int) -> list[FileRecord]:
        """Files of any project whose `expires_at` has passed, soonest first (for the sweeper)."""
        with self.database.reading() as conn:
            rows = conn.run("expired_files", {"now": now, "limit": limit}).fetchall()
        return [from_row(FileRecord, row) for row in rows]

    # --- blob intents: a blob written before the row that makes it visible ---------------------------

    def begin_blob(self, key: str, *, now: int) -> None:
        """Record that `key` is about to be written; the row that publishes it clears the record."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_blob_intent", {"key": key, "created_at": now})

    def end_blob(self, key: str) -> None:
        """Clear the record of `key` (its write failed and was cleaned up, or the sweeper removed it)."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("delete_blob_intent", {"key": key})

    def stale_blobs(self, *, created_before: int, limit: int) -> list[str]:
        """Keys whose writer never published them, recorded before `created_before`, oldest first."""
        with self.database.reading() as conn:
            rows = conn.run("stale_blob_intents", {"created_before": created_before, "limit": limit}).fetchall()
        return [row["key"] for row in rows]

    # --- uploads -------------------------------------------------------------------------------------

    def insert_upload(self, record: UploadRecord) -> None:
        """Insert a pending upload."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_upload", to_params(record))

    def get_upload(self, upload_id: str, *, project_id: str) -> UploadRecord:
        """Return an upload of this project. `NotFound`."""
        with self.database.reading() as conn:
            row = conn.run("get_upload", {"id": upload_id, "project_id": project_id}).fetchone()
        if row is None:
            raise NotFound(upload_id)
        return from_row(UploadRecord, row)

    @staticmethod
    def _lock_pending_upload(conn: Connection, upload_id: str, project_id: str) -> dict[str, Any]:
        """Lock the upload row (PostgreSQL `FOR UPDATE`) and return it; `NotFound`, `StateConflict` unless pending."""
        row = conn.run("lock_upload", {"id": upload_id, "project_id": project_id}).fetchone()
        if row is None:
            raise NotFound(upload_id)
        if row["status"] != "pending":
            raise StateConflict(row["status"])
        return row

    @classmethod
    def _claim(cls, conn: Connection, upload_id: str, project_id: str, part_id: str, *, size: int, final: bool) -> None:
        """Lock the pending upload and check that `part_id` may take `size` more bytes (`final`: `size` in all).

        Raises:
            NotFound, StateConflict: see `_lock_pending_upload`.
            LimitExceeded: the upload's parts and claims would then exceed its declared bytes.
        """
        declared = cls._lock_pending_upload(conn, upload_id, project_id)["bytes"]
        claims = conn.run("upload_claims", {"upload_id": upload_id, "part_id": part_id}).fetchone()
        held = claims["parts"] + claims["others"] + (0 if final else claims["own"])
        if held + size > declared:
            raise LimitExceeded(f"upload {upload_id} declared {declared} bytes; {held} are held, {size} more asked")

    def reserve_upload_bytes(self, upload_id: str, *, project_id: str, part_id: str, size: int) -> None:
        """Claim `size` more bytes of a pending upload's declared size for the part `part_id` streaming in.

        Raises:
            NotFound: no such upload in the project.
            StateConflict: the upload is no longer pending.
            LimitExceeded: the upload's parts and the claims of the parts in flight would exceed its `bytes`.
        """
        with self.database.transaction(immediate=True) as conn:
            self._claim(conn, upload_id, project_id, part_id, size=size, final=False)
            conn.run("reserve_upload_bytes", {"part_id": part_id, "upload_id": upload_id, "bytes": size})

    def release_upload_bytes(self, part_id: str) -> None:
        """Drop the claim of a part that will not be committed (none is fine)."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("release_upload_bytes", {"part_id": part_id})

    def add_upload_part(self, record: UploadPartRecord) -> None:
        """Insert a part of a pending upload in place of its claim (see `MetadataStore.add_upload_part`).

        Raises:
            NotFound: no such upload in the project.
            StateConflict: the upload is no longer pending.
            LimitExceeded: with the other parts and claims it would exceed the upload's `bytes`.
        """
        with self.database.transaction(immediate=True) as conn:
            self._claim(conn, record.upload_id, record.project_id, record.id, size=record.bytes, final=True)
            conn.run("insert_upload_part", to_params(record))
            conn.run("release_upload_bytes", {"part_id": record.id})
            conn.run("delete_blob_intent", {"key": record.blob_key})

    def list_upload_parts(self, upload_id: str, *, project_id: str) -> list[UploadPartRecord]:
        """All parts of an upload of this project, oldest first. `NotFound`."""
        with self.database.reading() as conn:
            if conn.run("get_upload", {"id": upload_id, "project_id": project_id}).fetchone() is None:
                raise NotFound(upload_id)
            rows = conn.run("list_upload_parts", {"upload_id": upload_id, "project_id": project_id}).fetchall()
        return [from_row(UploadPartRecord, row) for row in rows]

    def finish_upload(
        self, upload_id: str, *, project_id: str, status: str, file: FileRecord | None = None
    ) -> UploadRecord:
        """Move a pending upload to `completed` (inserting `file` in the same transaction) or `cancelled`.

        Raises:
            NotFound: no such upload in the project.
            StateConflict: the upload is not pending (`current` says what it is).
            ValueError: `status` is neither `completed` nor `cancelled`.
        """
        if status not in _FINISHED:
            raise ValueError(f"an upload finishes as completed or cancelled, not {status!r}")
        with self.database.transaction(immediate=True) as conn:
            self._lock_pending_upload(conn, upload_id, project_id)
            if file is not None:
                conn.run("insert_file", to_params(file))
                conn.run("delete_blob_intent", {"key": file.blob_key})
            params = {"id": upload_id, "status": status, "file_id": None if file is None else file.id}
            row = conn.run("finish_upload", params).fetchone()
            conn.run("release_upload_reservations", {"upload_id": upload_id})
        return from_row(UploadRecord, row)

    def expired_uploads(self, *, created_before: int, limit: int) -> list[UploadRecord]:
        """Pending uploads of any project created before the given time, oldest first."""
        with self.database.reading() as conn:
            rows = conn.run("expired_uploads", {"created_before": created_before, "limit": limit}).fetchall()
        return [from_row(UploadRecord, row) for row in rows]

    def delete_upload_parts(self, upload_id: str, *, project_id: str) -> list[UploadPartRecord]:
        """Delete the part rows of an upload and return them, oldest first (the caller deletes the blobs)."""
        with self.database.transaction(immediate=True) as conn:
            rows = conn.run("delete_upload_parts", {"upload_id": upload_id, "project_id": project_id}).fetchall()
        parts = [from_row(UploadPartRecord, row) for row in rows]
        return sorted(parts, key=lambda part: (part.created_at, part.id))

    def expire_upload(self, upload_id: str, *, project_id: str) -> bool:
        """Move a still pending upload to `expired`; False if it was completed or cancelled meanwhile."""
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("expire_upload", {"id": upload_id, "project_id": project_id}).fetchone()
            if row is not None:
                conn.run("release_upload_reservations", {"upload_id": upload_id})
        return row is not None

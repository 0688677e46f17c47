"""Housekeeping: expired uploads, files and idempotency keys, orphan blobs, stale multipart uploads, old webhooks.

Each sweep selects by age alone, so several API replicas (and `tunewright serve` at start) can sweep at once
without touching each other's work in flight. The daily snapshot of each project's stored bytes (metering) is an
upsert that keeps the day's most, so replicas taking it at once agree. The API runs `sweep_once` every
`sweep_every_s` seconds (api/sweeper.py); `serve` runs the crash leftovers' sweeps before it starts.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from tunewright.storage.errors import Conflict, NotFound

if TYPE_CHECKING:
    from tunewright.storage.base import Stores
    from tunewright.storage.records import FileRecord
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)

BATCH = 500
"""Rows one pass of a sweep handles at most; the next pass takes the rest."""
WEBHOOK_RETENTION_S = 30 * 24 * 3600
"""How long a webhook delivery that was acknowledged or given up on stays listed."""


class FileInUse(Conflict):
    """A file a fine-tuning job in progress reads cannot be deleted; `job_id` names one such job."""

    def __init__(self, file_id: str, job_id: str) -> None:
        super().__init__(f"file {file_id} is used by job {job_id}")
        self.job_id = job_id


def delete_unused_file(stores: Stores, file_id: str, *, project_id: str) -> FileRecord:
    """Delete a file unless a job in progress uses it: row first, blob after.

    Raises:
        FileInUse: a job that has not ended uses it.
        NotFound: no such file in the project.
    """
    jobs = stores.metadata.active_jobs_using_file(file_id, project_id=project_id)
    if jobs:
        raise FileInUse(file_id, jobs[0])
    record = stores.metadata.delete_file(file_id, project_id=project_id)
    try:
        stores.blobs.delete(record.blob_key)
    except Exception:  # the row is gone, so the file is deleted; a stray blob is logged for the operator
        logger.exception("could not delete blob %s of deleted file %s", record.blob_key, file_id)
    return record


def drop_upload_parts(stores: Stores, upload_id: str, project_id: str) -> None:
    """Delete an upload's part rows, then their blobs (a stray part blob is harmless once its row is gone)."""
    for part in stores.metadata.delete_upload_parts(upload_id, project_id=project_id):
        try:
            stores.blobs.delete(part.blob_key)
        except Exception:
            logger.exception("could not delete part blob %s", part.blob_key)


def sweep_expired_uploads(stores: Stores, *, ttl_s: int, now: int | None = None) -> int:
    """Mark uploads older than their lifetime `expired` and drop their parts; return how many."""
    now = int(time.time()) if now is None else now
    count = 0
    for upload in stores.metadata.expired_uploads(created_before=now - ttl_s, limit=BATCH):
        if stores.metadata.expire_upload(upload.id, project_id=upload.project_id):
            drop_upload_parts(stores, upload.id, upload.project_id)
            count += 1
    return count


def sweep_expired_files(stores: Stores, *, now: int | None = None) -> int:
    """Delete files whose `expires_at` has passed (a file a job in progress uses is kept for now)."""
    now = int(time.time()) if now is None else now
    count = 0
    for record in stores.metadata.expired_files(now=now, limit=BATCH):
        try:
            delete_unused_file(stores, record.id, project_id=record.project_id)
        except (FileInUse, NotFound):
            continue  # in use by a job in progress, or deleted meanwhile: the next pass looks again
        count += 1
    return count


def sweep_orphan_blobs(stores: Stores, *, older_than_s: int, now: int | None = None) -> int:
    """Delete blobs whose writer recorded an intent and never published them (it crashed mid-write)."""
    now = int(time.time()) if now is None else now
    count = 0
    for key in stores.metadata.stale_blobs(created_before=now - older_than_s, limit=BATCH):
        stores.blobs.delete(key)
        stores.metadata.end_blob(key)
        count += 1
    return count


def sweep_stale_multipart(stores: Stores, *, older_than_s: int, now: float | None = None) -> int:
    """Abort the S3 multipart uploads of puts whose process died mid-write (a local store has none)."""
    abort = getattr(stores.blobs, "abort_stale_uploads", None)
    return 0 if abort is None else int(abort(older_than_s, now=now))


def sweep_webhook_deliveries(stores: Stores, *, now: int | None = None) -> int:
    """Delete webhook deliveries that ended more than `WEBHOOK_RETENTION_S` ago; pending ones always stay."""
    now = int(time.time()) if now is None else now
    return stores.metadata.delete_finished_webhook_deliveries(finished_before=now - WEBHOOK_RETENTION_S, limit=BATCH)


def sweep_idempotency_keys(stores: Stores, *, now: float | None = None) -> int:
    """Delete idempotency keys whose answer expired (24 h), and expired claims whose holder is gone."""
    return stores.metadata.delete_expired_idempotency_keys(now=time.time() if now is None else now, limit=BATCH)


def sweep_once(stores: Stores, settings: Settings) -> None:
    """One pass of every periodic sweep, then the stored-bytes snapshot; failures are logged, never raised."""
    for name, sweep in (
        ("uploads", lambda: sweep_expired_uploads(stores, ttl_s=settings.upload_ttl_s)),
        ("files", lambda: sweep_expired_files(stores)),
        ("orphan blobs", lambda: sweep_orphan_blobs(stores, older_than_s=settings.orphan_blob_age_s)),
        ("multipart uploads", lambda: sweep_stale_multipart(stores, older_than_s=settings.orphan_blob_age_s)),
        ("webhook deliveries", lambda: sweep_webhook_deliveries(stores)),
        ("idempotency keys", lambda: sweep_idempotency_keys(stores)),
    ):
        try:
            removed = sweep()
        except Exception:
            logger.exception("sweep of expired %s failed", name)
            continue
        if removed:
            logger.info("swept %d expired %s", removed, name)
    try:
        stores.metadata.snapshot_storage(now=int(time.time()))
    except Exception:
        logger.exception("snapshot of stored bytes failed")

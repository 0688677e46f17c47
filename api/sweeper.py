"""Background housekeeping in the API process: expired uploads, expired files, orphan blobs, stale multipart uploads.

Each pass selects by age alone, so several API replicas can sweep at once without touching each other's
work in flight.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from tunewright.api.errors import APIError
from tunewright.api.files.service import delete_file
from tunewright.api.uploads.service import sweep_expired_uploads

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from litestar import Litestar

    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)


def sweep_expired_files(stores: Stores, *, now: int | None = None) -> int:
    """Delete files whose `expires_at` has passed (a file a job in progress uses is kept for now)."""
    now = int(time.time()) if now is None else now
    count = 0
    for record in stores.metadata.expired_files(now=now, limit=500):
        try:
            delete_file(stores, record.id, project_id=record.project_id)
        except APIError:
            continue  # in use by a job in progress, or deleted meanwhile: the next pass looks again
        count += 1
    return count


def sweep_orphan_blobs(stores: Stores, *, older_than_s: int, now: int | None = None) -> int:
    """Delete blobs whose writer recorded an intent and never published them (it crashed mid-write)."""
    now = int(time.time()) if now is None else now
    count = 0
    for key in stores.metadata.stale_blobs(created_before=now - older_than_s, limit=500):
        stores.blobs.delete(key)
        stores.metadata.end_blob(key)
        count += 1
    return count


def sweep_stale_multipart(stores: Stores, *, older_than_s: int, now: float | None = None) -> int:
    """Abort the S3 multipart uploads of puts whose process died mid-write (a local store has none)."""
    abort = getattr(stores.blobs, "abort_stale_uploads", None)
    return 0 if abort is None else int(abort(older_than_s, now=now))


def sweep_once(stores: Stores, settings: Settings) -> None:
    """One pass of every sweep; failures are logged, never raised."""
    for name, sweep in (
        ("uploads", lambda: sweep_expired_uploads(stores, ttl_s=settings.upload_ttl_s)),
        ("files", lambda: sweep_expired_files(stores)),
        ("orphan blobs", lambda: sweep_orphan_blobs(stores, older_than_s=settings.orphan_blob_age_s)),
        ("multipart uploads", lambda: sweep_stale_multipart(stores, older_than_s=settings.orphan_blob_age_s)),
    ):
        try:
            removed = sweep()
        except Exception:
            logger.exception("sweep of expired %s failed", name)
            continue
        if removed:
            logger.info("swept %d expired %s", removed, name)


@contextlib.asynccontextmanager
async def sweeper_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Run `sweep_once` every `sweep_every_s` seconds while the app serves."""
    settings: Settings = app.state.settings
    stores: Stores = app.state.stores

    async def loop() -> None:
        # The first pass waits one period: `tunewright serve` has just swept, before starting its workers.
        while True:
            await anyio.sleep(settings.sweep_every_s)
            await anyio.to_thread.run_sync(sweep_once, stores, settings)

    async with anyio.create_task_group() as group:
        group.start_soon(loop)
        yield
        group.cancel_scope.cancel()

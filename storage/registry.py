"""Opening the stores the settings name: the database and blob store URLs pick the backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunewright.storage.base import Stores

if TYPE_CHECKING:
    from tunewright.storage.base import BlobStore
    from tunewright.storage.settings import Settings


def open_stores(settings: Settings) -> Stores:
    """Open the stores the settings name: `sqlite:///…`/`postgresql://…` and `file://…`/`s3://bucket/prefix`.

    Does not migrate: callers run `stores.metadata.migrate()` where they own the schema.
    """
    from tunewright.storage.db import open_database
    from tunewright.storage.metadata import SQLMetadataStore
    from tunewright.storage.queue import SQLJobQueue

    blobs = open_blob_store(settings)  # first: if it fails, no database pool is left open
    database = open_database(settings.database_url, pool_size=settings.db_pool_size)
    return Stores(blobs=blobs, metadata=SQLMetadataStore(database), queue=SQLJobQueue(database))


def open_blob_store(settings: Settings) -> BlobStore:
    """Open the blob store named by `settings.blob_url`."""
    if settings.blob_url.startswith("s3://"):
        from tunewright.storage.s3 import S3BlobStore

        bucket, _, prefix = settings.blob_url[len("s3://") :].partition("/")
        return S3BlobStore(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            part_size=settings.s3_part_size,
        )
    from tunewright.storage.local import LocalBlobStore

    return LocalBlobStore(settings.blob_url[len("file://") :])

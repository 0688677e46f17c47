"""S3BlobStore: blobs as objects in an S3 bucket (AWS, MinIO, R2, Ceph, moto) through boto3.

Writes up to `part_size` bytes are one `PutObject`; longer streams are multipart uploads of `part_size`
parts, aborted on any failure, so readers see the old object or the whole new one and memory stays near
two parts.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from tunewright.storage.errors import NotFound, Unavailable
from tunewright.storage.keys import validate_key, validate_prefix
from tunewright.storage.streams import CHUNK_SIZE, ChunkReader, Readable, StreamDigest, concat_parts, iter_chunks

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from tunewright.storage.base import BlobInfo

logger = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3 refuses multipart parts below 5 MiB, except the last."""

_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_UNAVAILABLE_CODES = frozenset(
    {"NoSuchBucket", "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}
)
_TRANSPORT_ERRORS = (BotoConnectionError, HTTPClientError, IncompleteReadError)


@functools.cache
def _data_loader() -> botocore.loaders.Loader:
    """The process's one reader of botocore's service descriptions: it caches what it parsed (the S3 model)."""
    return botocore.loaders.create_loader()


def new_session() -> boto3.session.Session:
    """A new boto3 session (credentials and clients of its own) over the process's one description loader.

    A session with a loader of its own parses the S3 model again: 50-100 ms per store. The loader holds only what
    it read from botocore's data files, so sessions on different threads can share it.
    """
    core = botocore.session.get_session()
    core.register_component("data_loader", _data_loader())
    return boto3.session.Session(botocore_session=core)


@contextlib.contextmanager
def _translated(key: str) -> Iterator[None]:
    """Map botocore errors to storage errors: missing object → NotFound, 5xx and transport → Unavailable.

    Other client errors (access denied, bad request) propagate unchanged: they are bugs or configuration.
    """
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _MISSING_CODES:
            raise NotFound(f"blob {key!r}") from exc
        if status >= 500 or code in _UNAVAILABLE_CODES:
            raise Unavailable(f"S3 failed on {key!r}: {code} {error.get('Message', '')}".rstrip()) from exc
        raise
    except _TRANSPORT_ERRORS as exc:
        raise Unavailable(f"S3 did not answer on {key!r}: {exc}") from exc


class _BodyReader(ChunkReader):
    """ChunkReader over a `GetObject` body that reports a dropped connection as `Unavailable`."""

    def __init__(self, source: Readable, chunk_size: int, key: str) -> None:
        super().__init__(source, chunk_size)
        self._key = key

    def _read(self, source: Readable, size: int) -> bytes:
        with _translated(self._key):
            return source.read(size)


class _MultipartUpload:
    """One multipart upload, started on its first part; `abort` is safe to call at any point."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    @property
    def started(self) -> bool:
        """Whether a part has been sent."""
        return self._upload_id is not None

    def add_part(self, body: bytes) -> None:
        """Upload the next part (starting the upload if needed)."""
        if self._upload_id is None:
            created = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        sent = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})

    def complete(self) -> None:
        """Publish the object made of the parts sent."""
        self._client.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._upload_id = None

    def abort(self) -> None:
        """Discard the parts sent; a failure is logged, not raised, so it cannot hide the original error.

        What a failed abort or a crashed process leaves, `S3BlobStore.abort_stale_uploads` aborts later.
        """
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload_id)
        except (BotoCoreError, ClientError):
            logger.warning("could not abort multipart upload %s of %s", upload_id, self._key, exc_info=True)


class S3BlobStore:
    """BlobStore on an S3 bucket; key `k` is the object `<prefix>/k` (or `k` with an empty prefix).

    Credentials come from boto3's usual chain (environment, shared files, instance roles).

    Args:
        bucket: the bucket name; it must exist.
        prefix: a folder inside the bucket for every key, `""` for none.
        endpoint_url: an S3-compatible endpoint (MinIO, R2, Ceph, moto); None for AWS.
        region: the signing region; None means `us-east-1`.
        part_size: the multipart part size in bytes, at least 5 MiB; memory per put is about twice this.
        session: the boto3 session to make clients from; None makes a new one. Sessions are not thread-safe:
            share one only between stores built on the same thread (tests do, to skip reloading models).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = 8 * 1024 * 1024,
        *,
        session: boto3.session.Session | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part)")
        self._bucket = bucket
        folder = prefix.strip("/")
        self._prefix = validate_key(folder) + "/" if folder else ""
        self._endpoint_url = endpoint_url
        self._region = region or "us-east-1"
        self._part_size = part_size
        # A session is not thread-safe but its clients are: make them here, on the constructing thread.
        self._session = session or new_session()
        self._client = self._make_client(retries=3, connect_timeout=10.0, read_timeout=60.0)
        # Health checks must answer in seconds, not after retries.
        self._ping_client = self._make_client(retries=1, connect_timeout=2.0, read_timeout=5.0)

    def _make_client(self, *, retries: int, connect_timeout: float, read_timeout: float) -> Any:
        options: dict[str, Any] = {
            "region_name": self._region,
            "retries": {"mode": "standard", "max_attempts": retries},
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "max_pool_connections": 32,
        }
        if self._endpoint_url:
            # Third-party stores: path-style URLs (no per-bucket DNS name) and checksums only where S3
            # requires them (boto3 ≥ 1.36's default CRC trailers break several of them).
            options["s3"] = {"addressing_style": "path"}
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        return self._session.client("s3", endpoint_url=self._endpoint_url, config=Config(**options))

    def _object_key(self, key: str) -> str:
        return self._prefix + validate_key(key)

    def put(self, key: str, stream: BinaryIO | Iterable[bytes], *, max_bytes: int | None = None) -> BlobInfo:
        """Stream into one PutObject, or a multipart upload above `part_size` (see `BlobStore.put`).

        Raises:
            InvalidKey: the key is malformed.
            ValueError: the stream exceeds `max_bytes`; nothing is stored.
            Unavailable: S3 did not answer or failed (5xx); nothing is stored.
        """
        object_key = self._object_key(key)
        digest = StreamDigest(max_bytes)
        upload = _MultipartUpload(self._client, self._bucket, object_key)
        buffer = bytearray()
        try:
            with _translated(key):
                for chunk in iter_chunks(stream):
                    digest.update(chunk)
                    buffer += chunk
                    while len(buffer) > self._part_size:  # strictly: a stream of exactly one part is a PUT
                        upload.add_part(_take(buffer, self._part_size))
                if upload.started:
                    upload.add_part(_take(buffer, len(buffer)))
                    upload.complete()
                else:
                    self._client.put_object(Bucket=self._bucket, Key=object_key, Body=_take(buffer, len(buffer)))
        except BaseException:
            upload.abort()
            raise
        return digest.info()

    def open(self, key: str, *, chunk_size: int = CHUNK_SIZE) -> ChunkReader:
        """Start a GetObject now and return an iterator over the body's chunks.

        Raises:
            NotFound: no object under `key` (raised here, before any chunk).
            Unavailable: S3 did not answer, here or while reading.
        """
        object_key = self._object_key(key)
        with _translated(key):
            response = self._client.get_object(Bucket=self._bucket, Key=object_key)
        return _BodyReader(response["Body"], chunk_size, key)

    def size(self, key: str) -> int:
        """Return the object's size from HeadObject. Raises `NotFound`."""
        object_key = self._object_key(key)
        with _translated(key):
            response = self._client.head_object(Bucket=self._bucket, Key=object_key)
        return int(response["ContentLength"])

    def delete(self, key: str) -> None:
        """Delete the object; S3 already treats a missing one as success."""
        object_key = self._object_key(key)
        with _translated(key):
            self._client.delete_object(Bucket=self._bucket, Key=object_key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under the folder `prefix` (ending in `/`), 1000 per request.

        Returns:
            The number of objects removed.

        Raises:
            Unavailable: S3 failed, or refused to delete some of the objects.
        """
        full_prefix = self._prefix + validate_prefix(prefix)
        removed = 0
        with _translated(prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=full_prefix)
            for page in pages:
                keys = [item["Key"] for item in page.get("Contents", [])]
                for start in range(0, len(keys), _DELETE_BATCH):
                    removed += self._delete_batch(keys[start : start + _DELETE_BATCH])
        return removed

    def _delete_batch(self, keys: list[str]) -> int:
        response = self._client.delete_objects(
            Bucket=self._bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
        )
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise Unavailable(f"S3 kept {len(errors)} of {len(keys)} objects: {first.get('Key')}: {first.get('Code')}")
        return len(keys)

    def concat(self, key: str, parts: Sequence[str]) -> BlobInfo:
        """Stream the parts, in order, into a new object, re-cut into `part_size` parts.

        Parts of any size work (S3's upload-part-copy would need 5 MiB ones); memory stays near two parts.

        Raises:
            NotFound: a part is missing; nothing is stored.
        """
        return concat_parts(self, key, parts)

    def abort_stale_uploads(self, older_than_s: float, *, now: float | None = None) -> int:
        """Abort the multipart uploads under this store's prefix started over `older_than_s` ago; return how many.

        A put whose process died leaves its multipart upload open, and the bucket keeps (and bills) its parts
        until it is aborted. A put in flight is far younger than the orphan age the sweeper passes.

        Raises:
            Unavailable: S3 did not answer.
        """
        cutoff = (time.time() if now is None else now) - older_than_s
        aborted = 0
        with _translated(self._prefix or "multipart uploads"):
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self._bucket, Prefix=self._prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() <= cutoff:
                        aborted += self._abort_upload(upload["Key"], upload["UploadId"])
        if aborted:
            logger.info("aborted %d stale multipart uploads under s3://%s/%s", aborted, self._bucket, self._prefix)
        return aborted

    def _abort_upload(self, object_key: str, upload_id: str) -> int:
        """Abort one multipart upload; 1, or 0 if it was completed or aborted meanwhile."""
        try:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=object_key, UploadId=upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return 0
            raise
        return 1

    def presign(self, key: str, ttl_s: int) -> str | None:
        """Return a presigned GetObject URL valid for `ttl_s` seconds."""
        object_key = self._object_key(key)
        return str(
            self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self._bucket, "Key": object_key}, ExpiresIn=ttl_s
            )
        )

    def ping(self) -> None:
        """HeadBucket; raise `Unavailable` on any failure (unreachable, missing bucket, no credentials)."""
        try:
            self._ping_client.head_bucket(Bucket=self._bucket)
        except (BotoCoreError, ClientError) as exc:
            raise Unavailable(f"S3 bucket {self._bucket!r} is not available: {exc}") from exc

    def close(self) -> None:
        """Close the clients' connection pools."""
        self._client.close()
        self._ping_client.close()


def _take(buffer: bytearray, size: int) -> bytes:
    """Remove the first `size` bytes of `buffer` and return them, copying them once."""
    with memoryview(buffer) as view:
        head = view[:size].tobytes()
    del buffer[:size]
    return head

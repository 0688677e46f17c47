"""Rules of /v1/files: streaming upload with line checks, listing, deletion, content."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from tunewright.api.errors import InvalidRequestError, NotFoundError, echo
from tunewright.api.files.schemas import CREATE_PURPOSES
from tunewright.api.forms import content_length, read_form
from tunewright.api.idempotency import creating
from tunewright.api.streaming import ThreadedSink, consume_alongside
from tunewright.storage.disk import disk_space
from tunewright.storage.errors import NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.keys import file_blob_key
from tunewright.storage.records import FileRecord
from tunewright.storage.sweeps import FileInUse, delete_unused_file
from tunewright.training_files.errors import DatasetError
from tunewright.training_files.validate import JsonlChecker

if TYPE_CHECKING:
    from collections.abc import Iterator

    from litestar import Request

    from tunewright.api.auth import Principal
    from tunewright.storage.base import BlobInfo, Stores
    from tunewright.storage.disk import DiskSpace
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)

MIN_EXPIRY_S = 3600
MAX_EXPIRY_S = 2_592_000
BATCH_DEFAULT_EXPIRY_S = 30 * 24 * 3600
FILE_FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]")


def file_not_found(file_id: str) -> NotFoundError:
    """404 for a file id that is not in the caller's project."""
    return NotFoundError(f"No such File object: {echo(file_id)}", param="file_id", code="file_not_found")


def blob_key(project_id: str, file_id: str) -> str:
    """Where a file's bytes live."""
    return file_blob_key(project_id, file_id)


def dataset_error_to_api(error: DatasetError, *, param: str) -> InvalidRequestError:
    """A line-located problem found while a file streams in, as a 400 naming the form field."""
    return InvalidRequestError("; ".join(error.details), param=param, code="invalid_training_file")


def parse_expiry(fields: dict[str, str], purpose: str, created_at: int) -> int | None:
    """Resolve `expires_after[anchor]`/`[seconds]` (batch files default to 30 days)."""
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return created_at + BATCH_DEFAULT_EXPIRY_S if purpose == "batch" else None
    if anchor != "created_at":
        raise InvalidRequestError(
            "Invalid 'expires_after[anchor]': the only supported anchor is 'created_at'.",
            param="expires_after.anchor",
            code="invalid_value",
        )
    try:
        value = int(seconds or "")
    except ValueError:
        raise InvalidRequestError(
            f"Invalid 'expires_after[seconds]': expected an integer, got '{echo(seconds)}'.",
            param="expires_after.seconds",
            code="invalid_type",
        ) from None
    if not MIN_EXPIRY_S <= value <= MAX_EXPIRY_S:
        raise InvalidRequestError(
            f"Invalid 'expires_after[seconds]': must be between {MIN_EXPIRY_S} and {MAX_EXPIRY_S}, got {value}.",
            param="expires_after.seconds",
            code="invalid_value",
        )
    return created_at + value


def check_purpose(purpose: str | None) -> str:
    """Return a valid create purpose or raise 400 naming `purpose`."""
    if purpose is None:
        raise InvalidRequestError(
            "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
        )
    if purpose not in CREATE_PURPOSES:
        allowed = ", ".join(f"'{p}'" for p in CREATE_PURPOSES)
        raise InvalidRequestError(
            f"Invalid value for 'purpose': expected one of {allowed}, got '{echo(purpose)}'.",
            param="purpose",
            code="invalid_value",
        )
    return purpose


class CheckedPut:
    """A blob put that, for fine-tune files, checks every line on the way (a bad line stores nothing)."""

    def __init__(
        self, stores: Stores, key: str, *, purpose: str | None, max_bytes: int, space: DiskSpace | None
    ) -> None:
        """Prepare the put for a file of `purpose` (None: the purpose part comes after the file part).

        Fine-tune files are checked and a bad line stops the put; with the purpose not known yet the check runs
        and a problem is kept for later; any other purpose is stored unchecked. `space` stops the put at the
        free-space watermark.
        """
        self.stores = stores
        self.key = key
        self.space = space
        self.check = purpose == "fine-tune"
        self.max_bytes = max_bytes
        # Upload checks the JSON Lines framing only: the format rules depend on the job's method and run
        # when a job names the file.
        self.checker = JsonlChecker(param="training_file") if purpose in ("fine-tune", None) else None
        self.deferred: DatasetError | None = None
        self.lines: int | None = None

    def _checked(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        if self.checker is None:
            yield from chunks
            return
        yield from consume_alongside(chunks, self._feed)  # checks while the put hashes and writes
        self._finish()

    def _feed(self, chunk: bytes) -> None:
        if self.deferred is not None or self.checker is None:
            return
        try:
            self.checker.feed(chunk)
        except DatasetError as exc:
            if self.check:
                raise
            self.deferred = exc

    def _finish(self) -> None:
        if self.deferred is not None or self.checker is None:
            return
        try:
            self.lines = self.checker.finish().lines
        except DatasetError as exc:
            if self.check:
                raise
            self.deferred = exc

    def __call__(self, chunks: Iterator[bytes]) -> BlobInfo:
        """Consume the chunks into the blob store (recorded as an intent until the row commits)."""
        return guarded_put(self.stores, self.key, self._checked(chunks), max_bytes=self.max_bytes, space=self.space)


def guarded_put(
    stores: Stores,
    key: str,
    chunks: Iterator[bytes],
    *,
    max_bytes: int | None = None,
    space: DiskSpace | None = None,
) -> BlobInfo:
    """Put a blob that a row will publish: its intent is recorded first, so a crash leaves no orphan.

    With `space`, the put stops (storing nothing) once the next chunk would cross the free-space watermark.

    Raises:
        InsufficientStorage: the watermark was reached, or the disk is full.
    """
    stores.metadata.begin_blob(key, now=int(time.time()))
    try:
        return stores.blobs.put(key, chunks if space is None else space.guard(chunks), max_bytes=max_bytes)
    except BaseException:
        stores.metadata.end_blob(key)
        raise


async def require_space(settings: Settings, stores: Stores, incoming: int) -> DiskSpace | None:
    """Refuse new data of `incoming` bytes (507) while the local blob store is under its free-space watermark.

    Returns:
        The check to pass to `guarded_put`, or None where there is none (S3, a watermark of 0).

    Raises:
        InsufficientStorage: `incoming` more bytes would leave less than `TUNEWRIGHT_MIN_FREE_BYTES` free.
    """
    space = disk_space(stores.blobs, min_free_bytes=settings.min_free_bytes)
    if space is not None:
        await anyio.to_thread.run_sync(space.require, max(incoming, 0))
    return space


def discard_blob(stores: Stores, key: str) -> None:
    """Undo a put whose row will not be committed: delete the blob, then its intent."""
    try:
        stores.blobs.delete(key)
    except Exception:  # the intent stays, so the sweeper retries the delete later
        logger.exception("could not delete unpublished blob %s", key)
        return
    stores.metadata.end_blob(key)


async def create_file(
    request: Request[Any, Any, Any], principal: Principal, settings: Settings, stores: Stores
) -> FileRecord:
    """Stream a multipart upload into the blob store, then commit its row."""
    project_id = principal.project_id or ""
    # A body over the route's limit gets its 413 from the form reader, not a 507 from here.
    space = await require_space(settings, stores, min(content_length(request), settings.max_file_bytes))
    file_id = new_id("file")
    key = blob_key(project_id, file_id)
    puts: list[CheckedPut] = []

    def open_sink(fields: dict[str, str], _filename: str) -> ThreadedSink[BlobInfo]:
        purpose = fields.get("purpose")
        if purpose is not None:
            check_purpose(purpose)
        put = CheckedPut(stores, key, purpose=purpose, max_bytes=settings.max_file_bytes, space=space)
        puts.append(put)
        return ThreadedSink(put)

    try:
        form = await read_form(
            request,
            file_field="file",
            text_fields=FILE_FIELDS,
            max_file_bytes=settings.max_file_bytes,
            open_sink=open_sink,
        )
    except DatasetError as exc:
        raise dataset_error_to_api(exc, param="file") from exc
    except BaseException:
        if puts:  # the file part may have been stored before a later part of the form failed
            await anyio.to_thread.run_sync(discard_blob, stores, key)
        raise
    return await anyio.to_thread.run_sync(_commit_file, form, puts, key, file_id, project_id, stores)


def _commit_file(
    form: Any, puts: list[CheckedPut], key: str, file_id: str, project_id: str, stores: Stores
) -> FileRecord:
    if form.filename is None or not puts:
        raise InvalidRequestError(
            "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
        )
    put = puts[0]
    try:
        purpose = check_purpose(form.fields.get("purpose"))
        created_at = int(time.time())
        expires_at = parse_expiry(form.fields, purpose, created_at)
        if purpose == "fine-tune" and put.deferred is not None:
            raise dataset_error_to_api(put.deferred, param="file")
        info: BlobInfo = form.file_result
        record = FileRecord(
            id=file_id,
            project_id=project_id,
            bytes=info.size,
            created_at=created_at,
            filename=form.filename,
            purpose=purpose,
            blob_key=key,
            sha256=info.sha256,
            status="processed",
            expires_at=expires_at,
            line_count=put.lines if purpose == "fine-tune" else None,
        )
        creating(file_id)
        stores.metadata.insert_file(record)
    except BaseException:
        discard_blob(stores, key)
        raise
    return record


def get_file(stores: Stores, file_id: str, *, project_id: str) -> FileRecord:
    """Return a file of the project or raise 404."""
    try:
        return stores.metadata.get_file(file_id, project_id=project_id)
    except NotFound:
        raise file_not_found(file_id) from None


def delete_file(stores: Stores, file_id: str, *, project_id: str) -> FileRecord:
    """Delete a file unless a job in progress uses it (404 `file_not_found`, 400 `file_in_use`)."""
    try:
        return delete_unused_file(stores, file_id, project_id=project_id)
    except FileInUse as exc:
        raise InvalidRequestError(
            f"File {file_id} is used by fine-tuning job {exc.job_id}, which is still in progress; "
            "cancel the job or wait for it to finish before deleting the file.",
            param="file_id",
            code="file_in_use",
        ) from None
    except NotFound:
        raise file_not_found(file_id) from None

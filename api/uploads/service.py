"""Rules of /v1/uploads: parts stored as they come, assembled on completion without holding the file."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from msgspec import UNSET

from tunewright.api.errors import InvalidRequestError, NotFoundError, echo
from tunewright.api.files.service import blob_key, dataset_error_to_api, discard_blob, guarded_put
from tunewright.api.forms import read_form
from tunewright.api.streaming import ThreadedSink, consume_alongside
from tunewright.api.uploads.schemas import UPLOAD_PURPOSES
from tunewright.storage.errors import NotFound, StateConflict
from tunewright.storage.ids import new_id
from tunewright.storage.records import FileRecord, UploadPartRecord, UploadRecord
from tunewright.trainer.errors import DatasetError
from tunewright.trainer.validate import JsonlChecker

if TYPE_CHECKING:
    from collections.abc import Iterator

    from litestar import Request

    from tunewright.api.auth import Principal
    from tunewright.api.uploads.schemas import CompleteUploadRequest, CreateUploadRequest
    from tunewright.storage.base import BlobInfo, Stores
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)


def upload_not_found(upload_id: str) -> NotFoundError:
    """404 for an upload id that is not in the caller's project."""
    return NotFoundError(f"No such Upload object: {echo(upload_id)}", param="upload_id", code="upload_not_found")


def create_upload(stores: Stores, settings: Settings, data: CreateUploadRequest, *, project_id: str) -> UploadRecord:
    """Open a pending upload that expires after the configured lifetime."""
    if data.purpose not in UPLOAD_PURPOSES:
        allowed = ", ".join(f"'{p}'" for p in UPLOAD_PURPOSES)
        raise InvalidRequestError(
            f"Invalid value for 'purpose': expected one of {allowed}, got '{echo(data.purpose)}'.",
            param="purpose",
            code="invalid_value",
        )
    if data.bytes > settings.max_upload_bytes:
        raise InvalidRequestError(
            f"Invalid 'bytes': an upload may hold at most {settings.max_upload_bytes} bytes, got {data.bytes}.",
            param="bytes",
            code="invalid_value",
        )
    now = int(time.time())
    record = UploadRecord(
        id=new_id("upload"),
        project_id=project_id,
        bytes=data.bytes,
        created_at=now,
        expires_at=now + settings.upload_ttl_s,
        filename=data.filename,
        purpose=data.purpose,
        mime_type=data.mime_type,
        file_expires_after=data.expires_after.seconds if data.expires_after is not UNSET else None,
    )
    stores.metadata.insert_upload(record)
    return record


def not_pending(upload_id: str, status: str, *, needs: str) -> InvalidRequestError:
    """400 for an action that needs a pending upload."""
    return InvalidRequestError(
        f"Upload {upload_id} is {status}; {needs} a pending upload.", param="upload_id", code="invalid_upload_state"
    )


def _pending_with_size(stores: Stores, upload_id: str, project_id: str) -> tuple[UploadRecord, int]:
    """A pending upload and the bytes its parts already hold."""
    upload = get_pending(stores, upload_id, project_id=project_id)
    return upload, sum(p.bytes for p in stores.metadata.list_upload_parts(upload.id, project_id=project_id))


def get_pending(stores: Stores, upload_id: str, *, project_id: str) -> UploadRecord:
    """Return a pending, unexpired upload, or raise 404/400."""
    try:
        upload = stores.metadata.get_upload(upload_id, project_id=project_id)
    except NotFound:
        raise upload_not_found(upload_id) from None
    if upload.status == "pending" and upload.expires_at <= int(time.time()):
        upload.status = "expired"
    if upload.status != "pending":
        raise not_pending(upload_id, upload.status, needs="parts and completion need")
    return upload


async def add_part(
    request: Request[Any, Any, Any], principal: Principal, settings: Settings, stores: Stores, upload_id: str
) -> UploadPartRecord:
    """Store one part (multipart field `data`) as its own blob."""
    import anyio.to_thread

    project_id = principal.project_id or ""
    upload, stored = await anyio.to_thread.run_sync(lambda: _pending_with_size(stores, upload_id, project_id))
    part_id = new_id("part")
    key = f"{project_id}/uploads/{upload.id}/{part_id}"
    # A part may not carry the upload past its declared size: storage stays bounded by what was announced.
    limit = max(0, min(settings.max_part_bytes, upload.bytes - stored))

    def open_sink(_fields: dict[str, str], _filename: str) -> ThreadedSink[BlobInfo]:
        return ThreadedSink(lambda chunks: guarded_put(stores, key, chunks, max_bytes=limit))

    try:
        form = await read_form(request, file_field="data", text_fields=(), max_file_bytes=limit, open_sink=open_sink)
    except BaseException:
        await anyio.to_thread.run_sync(discard_blob, stores, key)
        raise
    if form.filename is None:
        raise InvalidRequestError(
            "Missing required parameter: 'data'.", param="data", code="missing_required_parameter"
        )
    info: BlobInfo = form.file_result
    record = UploadPartRecord(
        id=part_id,
        upload_id=upload.id,
        project_id=project_id,
        created_at=int(time.time()),
        bytes=info.size,
        blob_key=key,
        sha256=info.sha256,
    )

    def commit() -> None:
        try:
            stores.metadata.add_upload_part(record)
        except StateConflict as exc:
            discard_blob(stores, key)
            raise not_pending(upload.id, exc.current, needs="parts need") from None

    await anyio.to_thread.run_sync(commit)
    return record


def _ordered_parts(
    stores: Stores, upload: UploadRecord, part_ids: list[str], *, project_id: str
) -> list[UploadPartRecord]:
    parts = {p.id: p for p in stores.metadata.list_upload_parts(upload.id, project_id=project_id)}
    if len(set(part_ids)) != len(part_ids):
        raise InvalidRequestError("Invalid 'part_ids': a part is listed twice.", param="part_ids", code="invalid_value")
    ordered = []
    for index, part_id in enumerate(part_ids):
        if part_id not in parts:
            raise InvalidRequestError(
                f"Invalid 'part_ids[{index}]': {echo(part_id)} is not a part of upload {upload.id}.",
                param=f"part_ids[{index}]",
                code="invalid_value",
            )
        ordered.append(parts[part_id])
    total = sum(p.bytes for p in ordered)
    if total != upload.bytes:
        raise InvalidRequestError(
            f"The parts total {total} bytes but the upload was created with bytes={upload.bytes}.",
            param="part_ids",
            code="invalid_value",
        )
    return ordered


class _Assembler:
    """Streams the parts in order into the file's blob, hashing MD5 and checking lines on the way."""

    def __init__(self, stores: Stores, parts: list[UploadPartRecord], *, check: bool) -> None:
        self.stores = stores
        self.parts = parts
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.checker = JsonlChecker(param="training_file") if check else None
        self.lines: int | None = None

    def chunks(self) -> Iterator[bytes]:
        if self.checker is None:
            yield from self._read_parts()
            return
        yield from consume_alongside(self._read_parts(), self.checker.feed)  # checks while the put writes
        self.lines = self.checker.finish().lines

    def _read_parts(self) -> Iterator[bytes]:
        for part in self.parts:
            for chunk in self.stores.blobs.open(part.blob_key):
                self.md5.update(chunk)
                yield chunk


def complete_upload(
    stores: Stores, settings: Settings, upload_id: str, data: CompleteUploadRequest, *, project_id: str
) -> tuple[UploadRecord, FileRecord]:
    """Assemble the parts into a File (same checks as /v1/files) and mark the upload completed."""
    upload = get_pending(stores, upload_id, project_id=project_id)
    parts = _ordered_parts(stores, upload, data.part_ids, project_id=project_id)
    file_id = new_id("file")
    key = blob_key(project_id, file_id)
    assembler = _Assembler(stores, parts, check=upload.purpose == "fine-tune")
    try:
        info = guarded_put(stores, key, assembler.chunks())
    except DatasetError as exc:
        raise dataset_error_to_api(exc, param="part_ids") from exc
    try:
        if data.md5 is not UNSET and data.md5.lower() != assembler.md5.hexdigest():
            raise InvalidRequestError(
                f"The md5 of the assembled file is {assembler.md5.hexdigest()}, not {echo(data.md5)}.",
                param="md5",
                code="invalid_value",
            )
        now = int(time.time())
        file = FileRecord(
            id=file_id,
            project_id=project_id,
            bytes=info.size,
            created_at=now,
            filename=upload.filename,
            purpose=upload.purpose,
            blob_key=key,
            sha256=info.sha256,
            expires_at=now + upload.file_expires_after if upload.file_expires_after else None,
            line_count=assembler.lines,
        )
        finished = stores.metadata.finish_upload(upload.id, project_id=project_id, status="completed", file=file)
    except StateConflict as exc:
        discard_blob(stores, key)
        raise not_pending(upload.id, exc.current, needs="completion needs") from None
    except BaseException:
        discard_blob(stores, key)
        raise
    _drop_parts(stores, upload.id, project_id)
    return finished, file


def cancel_upload(stores: Stores, upload_id: str, *, project_id: str) -> UploadRecord:
    """Cancel a pending upload and drop its parts."""
    get_pending(stores, upload_id, project_id=project_id)
    try:
        upload = stores.metadata.finish_upload(upload_id, project_id=project_id, status="cancelled")
    except StateConflict as exc:
        raise not_pending(upload_id, exc.current, needs="cancelling needs") from None
    _drop_parts(stores, upload_id, project_id)
    return upload


def _drop_parts(stores: Stores, upload_id: str, project_id: str) -> None:
    for part in stores.metadata.delete_upload_parts(upload_id, project_id=project_id):
        try:
            stores.blobs.delete(part.blob_key)
        except Exception:  # a stray part blob is harmless; the row is gone
            logger.exception("could not delete part blob %s", part.blob_key)


def sweep_expired_uploads(stores: Stores, *, ttl_s: int, now: int | None = None) -> int:
    """Mark uploads older than their lifetime `expired` and drop their parts; return how many.

    Selection is by age alone, so a sweep on one replica never touches another replica's live upload.
    """
    now = int(time.time()) if now is None else now
    count = 0
    for upload in stores.metadata.expired_uploads(created_before=now - ttl_s, limit=500):
        if stores.metadata.expire_upload(upload.id, project_id=upload.project_id):
            _drop_parts(stores, upload.id, upload.project_id)
            count += 1
    return count

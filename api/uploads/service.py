"""Rules of /v1/uploads: parts stored as they come, assembled on completion without holding the file."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from msgspec import UNSET

from tunewright.api.errors import APIError, InvalidRequestError, NotFoundError, PayloadTooLargeError, echo
from tunewright.api.files.service import blob_key, dataset_error_to_api, discard_blob, guarded_put, require_space
from tunewright.api.forms import content_length, read_form
from tunewright.api.idempotency import creating
from tunewright.api.streaming import ThreadedSink, consume_alongside
from tunewright.api.uploads.schemas import UPLOAD_PURPOSES
from tunewright.storage.disk import disk_space
from tunewright.storage.errors import LimitExceeded, NotFound, StateConflict
from tunewright.storage.ids import new_id
from tunewright.storage.records import FileRecord, UploadPartRecord, UploadRecord
from tunewright.storage.sweeps import drop_upload_parts
from tunewright.training_files.errors import DatasetError
from tunewright.training_files.validate import JsonlChecker

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
    creating(record.id)
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


class _PartWriter:
    """One part streaming into its own blob, its bytes claimed from the upload's declared size as they come."""

    def __init__(self, stores: Stores, upload: UploadRecord, project_id: str) -> None:
        self.stores = stores
        self.upload = upload
        self.project_id = project_id
        self.id = new_id("part")
        self.key = f"{project_id}/uploads/{upload.id}/{self.id}"

    def claimed(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Yield `chunks`, claiming each one's bytes before it is written: parts sent at once count together."""
        for chunk in chunks:
            self.stores.metadata.reserve_upload_bytes(
                self.upload.id, project_id=self.project_id, part_id=self.id, size=len(chunk)
            )
            yield chunk

    def refusal(self, exc: StateConflict | LimitExceeded) -> APIError:
        """The answer to a part refused by the store: the upload finished meanwhile, or is full."""
        if isinstance(exc, StateConflict):
            return not_pending(self.upload.id, exc.current, needs="parts need")
        return PayloadTooLargeError(
            f"Upload {self.upload.id} was created with bytes={self.upload.bytes}; its parts (those being sent "
            "at the same time included) may not hold more.",
            param="data",
        )

    def discard(self) -> None:
        """Undo the part: its blob, then its claim (a claim left behind lapses when the upload ends)."""
        discard_blob(self.stores, self.key)
        try:
            self.stores.metadata.release_upload_bytes(self.id)
        except Exception:
            logger.exception("could not release the claim of part %s", self.id)

    def commit(self, info: BlobInfo) -> UploadPartRecord:
        """Publish the stored part in place of its claim."""
        record = UploadPartRecord(
            id=self.id,
            upload_id=self.upload.id,
            project_id=self.project_id,
            created_at=int(time.time()),
            bytes=info.size,
            blob_key=self.key,
            sha256=info.sha256,
        )
        creating(f"{self.upload.id}/{self.id}")
        try:
            self.stores.metadata.add_upload_part(record)
        except (StateConflict, LimitExceeded) as exc:
            self.discard()
            raise self.refusal(exc) from None
        return record


async def add_part(
    request: Request[Any, Any, Any], principal: Principal, settings: Settings, stores: Stores, upload_id: str
) -> UploadPartRecord:
    """Store one part (multipart field `data`) as its own blob."""
    import anyio.to_thread

    project_id = principal.project_id or ""
    upload, stored = await anyio.to_thread.run_sync(lambda: _pending_with_size(stores, upload_id, project_id))
    part = _PartWriter(stores, upload, project_id)
    # A part may not carry the upload past its declared size: storage stays bounded by what was announced.
    limit = max(0, min(settings.max_part_bytes, upload.bytes - stored))
    space = await require_space(settings, stores, min(content_length(request), limit))

    def open_sink(_fields: dict[str, str], _filename: str) -> ThreadedSink[BlobInfo]:
        return ThreadedSink(
            lambda chunks: guarded_put(stores, part.key, part.claimed(chunks), max_bytes=limit, space=space)
        )

    try:
        form = await read_form(request, file_field="data", text_fields=(), max_file_bytes=limit, open_sink=open_sink)
    except (StateConflict, LimitExceeded) as exc:
        await anyio.to_thread.run_sync(part.discard)
        raise part.refusal(exc) from None
    except BaseException:
        await anyio.to_thread.run_sync(part.discard)
        raise
    if form.filename is None:
        raise InvalidRequestError(
            "Missing required parameter: 'data'.", param="data", code="missing_required_parameter"
        )
    return await anyio.to_thread.run_sync(part.commit, form.file_result)


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
    space = disk_space(stores.blobs, min_free_bytes=settings.min_free_bytes)
    if space is not None:  # the assembled file is a second copy of the parts until they are dropped
        space.require(upload.bytes)
    file_id = new_id("file")
    key = blob_key(project_id, file_id)
    assembler = _Assembler(stores, parts, check=upload.purpose == "fine-tune")
    try:
        info = guarded_put(stores, key, assembler.chunks(), space=space)
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
        creating(upload.id)
        finished = stores.metadata.finish_upload(upload.id, project_id=project_id, status="completed", file=file)
    except StateConflict as exc:
        discard_blob(stores, key)
        raise not_pending(upload.id, exc.current, needs="completion needs") from None
    except BaseException:
        discard_blob(stores, key)
        raise
    drop_upload_parts(stores, upload.id, project_id)
    return finished, file


def cancel_upload(stores: Stores, upload_id: str, *, project_id: str) -> UploadRecord:
    """Cancel a pending upload and drop its parts."""
    get_pending(stores, upload_id, project_id=project_id)
    try:
        upload = stores.metadata.finish_upload(upload_id, project_id=project_id, status="cancelled")
    except StateConflict as exc:
        raise not_pending(upload_id, exc.current, needs="cancelling needs") from None
    drop_upload_parts(stores, upload_id, project_id)
    return upload

"""Wire objects of /v1/uploads, mirroring OpenAI's `Upload`, `UploadPart` and their requests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from msgspec import UNSET, Meta, UnsetType

from tunewright.api.files.schemas import OpenAIFile
from tunewright.api.schemas import Request, Response

if TYPE_CHECKING:
    from tunewright.storage.records import FileRecord, UploadPartRecord, UploadRecord

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


class FileExpirationAfter(Request):
    """`expires_after`: seconds after the File's creation."""

    anchor: Literal["created_at"]
    seconds: Annotated[int, Meta(ge=3600, le=2_592_000)]


class CreateUploadRequest(Request):
    """Body of `POST /v1/uploads`."""

    filename: Annotated[str, Meta(min_length=1, max_length=1024)]
    purpose: str
    bytes: Annotated[int, Meta(ge=0)]
    mime_type: str
    expires_after: FileExpirationAfter | UnsetType = UNSET


class CompleteUploadRequest(Request):
    """Body of `POST /v1/uploads/{id}/complete`."""

    part_ids: list[str]
    md5: str | UnsetType = UNSET


class Upload(Response):
    """An upload (`object: "upload"`); `file` is set once it is completed."""

    id: str
    created_at: int
    filename: str
    bytes: int
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    expires_at: int
    file: OpenAIFile | None = None
    object: Literal["upload"] = "upload"

    @classmethod
    def from_record(cls, record: UploadRecord, file: FileRecord | None = None) -> Upload:
        """The only mapping from an UploadRecord to the wire."""
        return cls(
            id=record.id,
            created_at=record.created_at,
            filename=record.filename,
            bytes=record.bytes,
            purpose=record.purpose,
            status=record.status,  # type: ignore[arg-type]
            expires_at=record.expires_at,
            file=OpenAIFile.from_record(file) if file is not None else None,
        )


class UploadPart(Response):
    """One stored part (`object: "upload.part"`)."""

    id: str
    created_at: int
    upload_id: str
    object: Literal["upload.part"] = "upload.part"

    @classmethod
    def from_record(cls, record: UploadPartRecord) -> UploadPart:
        """The only mapping from an UploadPartRecord to the wire."""
        return cls(id=record.id, created_at=record.created_at, upload_id=record.upload_id)

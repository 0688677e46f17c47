"""Wire objects of /v1/files, mirroring OpenAI's `OpenAIFile` and friends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from msgspec import UNSET, UnsetType

from tunewright.api.schemas import Response

if TYPE_CHECKING:
    from tunewright.storage.records import FileRecord

CREATE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
LIST_PURPOSES = (
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
    "evals",
)


class OpenAIFile(Response):
    """A stored file (`object: "file"`)."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | UnsetType = UNSET
    status_details: str | UnsetType = UNSET
    object: Literal["file"] = "file"

    @classmethod
    def from_record(cls, record: FileRecord) -> OpenAIFile:
        """The only mapping from a FileRecord to the wire."""
        return cls(
            id=record.id,
            bytes=record.bytes,
            created_at=record.created_at,
            expires_at=record.expires_at if record.expires_at is not None else UNSET,
            filename=record.filename,
            purpose=record.purpose,
            status=record.status,  # type: ignore[arg-type]
            status_details=record.status_details if record.status_details is not None else UNSET,
        )

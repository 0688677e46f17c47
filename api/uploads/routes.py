"""HTTP routes of /v1/uploads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Controller, Request, post
from litestar.params import FromPath, JSONBody

from tunewright.api.auth import Caller, require_project
from tunewright.api.dependencies import AppSettings, AppStores
from tunewright.api.idempotency import IDEMPOTENT, found
from tunewright.api.openapi import AddUploadPartOperation
from tunewright.api.scopes import SCOPE
from tunewright.api.uploads import service
from tunewright.api.uploads.schemas import CompleteUploadRequest, CreateUploadRequest, Upload, UploadPart

if TYPE_CHECKING:
    from tunewright.storage.base import Stores


def reread_upload(stores: Stores, project_id: str, upload_id: str) -> Upload | None:
    """The upload a request created, as `POST /v1/uploads` answers it (for the idempotency layer)."""
    return found(lambda: Upload.from_record(stores.metadata.get_upload(upload_id, project_id=project_id)))


def reread_part(stores: Stores, project_id: str, resource: str) -> UploadPart | None:
    """The part a request added (`<upload id>/<part id>`), as the parts route answers it."""
    upload_id, _, part_id = resource.partition("/")
    parts = found(lambda: stores.metadata.list_upload_parts(upload_id, project_id=project_id)) or []
    return next((UploadPart.from_record(part) for part in parts if part.id == part_id), None)


def reread_completed(stores: Stores, project_id: str, upload_id: str) -> Upload | None:
    """The upload a request completed, with its File, as the complete route answers it; None unless completed."""
    upload = found(lambda: stores.metadata.get_upload(upload_id, project_id=project_id))
    if upload is None or upload.status != "completed" or upload.file_id is None:
        return None
    file = found(lambda: stores.metadata.get_file(upload.file_id or "", project_id=project_id))
    return None if file is None else Upload.from_record(upload, file)


class UploadsController(Controller):
    """`/v1/uploads`: create, add parts, complete, cancel."""

    path = "/v1/uploads"
    guards = [require_project]
    opt = {SCOPE: "files"}
    tags = ["Uploads"]

    @post("/", status_code=200, sync_to_thread=True, opt={IDEMPOTENT: reread_upload})
    def create_upload(
        self, stores: AppStores, settings: AppSettings, principal: Caller, data: JSONBody[CreateUploadRequest]
    ) -> Upload:
        """Open an upload of `bytes` bytes that expires in an hour."""
        record = service.create_upload(stores, settings, data, project_id=principal.project_id or "")
        return Upload.from_record(record)

    @post(
        "/{upload_id:str}/parts",
        status_code=200,
        request_max_body_size=None,
        operation_class=AddUploadPartOperation,
        opt={IDEMPOTENT: reread_part},
    )
    async def add_upload_part(
        self,
        request: Request[Any, Any, Any],
        stores: AppStores,
        settings: AppSettings,
        principal: Caller,
        upload_id: FromPath[str],
    ) -> UploadPart:
        """Add a part (multipart field `data`, up to 64 MiB)."""
        record = await service.add_part(request, principal, settings, stores, upload_id)
        return UploadPart.from_record(record)

    @post("/{upload_id:str}/complete", status_code=200, sync_to_thread=True, opt={IDEMPOTENT: reread_completed})
    def complete_upload(
        self,
        stores: AppStores,
        settings: AppSettings,
        principal: Caller,
        upload_id: FromPath[str],
        data: JSONBody[CompleteUploadRequest],
    ) -> Upload:
        """Assemble the parts in `part_ids` order into a File."""
        upload, file = service.complete_upload(stores, settings, upload_id, data, project_id=principal.project_id or "")
        return Upload.from_record(upload, file)

    @post("/{upload_id:str}/cancel", status_code=200, sync_to_thread=True)
    def cancel_upload(self, stores: AppStores, principal: Caller, upload_id: FromPath[str]) -> Upload:
        """Cancel a pending upload."""
        record = service.cancel_upload(stores, upload_id, project_id=principal.project_id or "")
        return Upload.from_record(record)


ROUTES = [UploadsController]

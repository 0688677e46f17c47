"""HTTP routes of /v1/files: decode, one service call, wire Struct."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Stream

from tunewright.api.auth import Caller, require_project
from tunewright.api.dependencies import AppSettings, AppStores
from tunewright.api.files import service
from tunewright.api.files.schemas import LIST_PURPOSES, OpenAIFile
from tunewright.api.idempotency import IDEMPOTENT, found
from tunewright.api.openapi import CreateFileOperation
from tunewright.api.pagination import check_choice, check_limit, edge_ids
from tunewright.api.schemas import CursorPageWithIds, DeletedObject
from tunewright.api.scopes import SCOPE
from tunewright.api.streaming import iterate_in_thread

if TYPE_CHECKING:
    from tunewright.storage.base import Stores


def content_disposition(filename: str) -> str:
    """An attachment header that cannot be broken by quotes or line breaks in a user's filename."""
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def reread_file(stores: Stores, project_id: str, file_id: str) -> OpenAIFile | None:
    """The file a request created, as `POST /v1/files` answers it (for the idempotency layer)."""
    return found(lambda: OpenAIFile.from_record(stores.metadata.get_file(file_id, project_id=project_id)))


class FilesController(Controller):
    """`/v1/files`."""

    path = "/v1/files"
    guards = [require_project]
    opt = {SCOPE: "files"}
    tags = ["Files"]

    @post(
        "/",
        status_code=200,
        request_max_body_size=None,
        operation_class=CreateFileOperation,
        opt={IDEMPOTENT: reread_file},
    )
    async def create_file(
        self, request: Request[Any, Any, Any], stores: AppStores, settings: AppSettings, principal: Caller
    ) -> OpenAIFile:
        """Upload a file (multipart: `file`, `purpose`, optional `expires_after[anchor|seconds]`)."""
        record = await service.create_file(request, principal, settings, stores)
        return OpenAIFile.from_record(record)

    @get("/", sync_to_thread=False)
    def list_files(
        self,
        stores: AppStores,
        principal: Caller,
        purpose: FromQuery[str | None] = None,
        limit: FromQuery[int] = 10000,
        order: FromQuery[str] = "desc",
        after: FromQuery[str | None] = None,
    ) -> CursorPageWithIds[OpenAIFile]:
        """List the project's files, newest first by default."""
        if purpose is not None:
            check_choice(purpose, LIST_PURPOSES, param="purpose")
        page = stores.metadata.list_files(
            project_id=principal.project_id or "",
            purpose=purpose,
            after=after,
            limit=check_limit(limit, maximum=10000),
            order=check_choice(order, ("asc", "desc"), param="order"),
        )
        first_id, last_id = edge_ids(page.items)
        return CursorPageWithIds(
            data=[OpenAIFile.from_record(r) for r in page.items],
            first_id=first_id,
            last_id=last_id,
            has_more=page.has_more,
        )

    @get("/{file_id:str}", sync_to_thread=False)
    def retrieve_file(self, stores: AppStores, principal: Caller, file_id: FromPath[str]) -> OpenAIFile:
        """Return one file."""
        record = service.get_file(stores, file_id, project_id=principal.project_id or "")
        return OpenAIFile.from_record(record)

    @delete("/{file_id:str}", status_code=200, sync_to_thread=True)
    def delete_file(self, stores: AppStores, principal: Caller, file_id: FromPath[str]) -> DeletedObject:
        """Delete a file (refused while a job in progress uses it)."""
        service.delete_file(stores, file_id, project_id=principal.project_id or "")
        return DeletedObject(id=file_id, object="file")

    @get("/{file_id:str}/content", media_type="application/octet-stream")
    async def download_file(self, stores: AppStores, principal: Caller, file_id: FromPath[str]) -> Response[Any]:
        """Stream the file's exact bytes."""
        import anyio.to_thread

        project_id = principal.project_id or ""
        record = await anyio.to_thread.run_sync(lambda: service.get_file(stores, file_id, project_id=project_id))
        chunks = await anyio.to_thread.run_sync(lambda: stores.blobs.open(record.blob_key))
        return Stream(
            iterate_in_thread(chunks),
            media_type="application/octet-stream",
            headers={
                "content-length": str(record.bytes),
                "content-disposition": content_disposition(record.filename),
            },
        )


ROUTES = [FilesController]

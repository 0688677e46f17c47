"""HTTP routes of /v1/fine_tuning: jobs, events, checkpoints, exports, checkpoint permissions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, cast

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Stream

from tunewright.api.auth import Caller, Principal, current_principal, require_project, require_project_or_admin
from tunewright.api.dependencies import AppEngine, AppSettings, AppStores
from tunewright.api.fine_tuning import events_stream, exports, permissions, service
from tunewright.api.fine_tuning.events_stream import StreamSlots
from tunewright.api.fine_tuning.list_cache import job_page
from tunewright.api.fine_tuning.schemas import (
    CreateFineTuningCheckpointPermissionRequest,
    CreateFineTuningExportRequest,
    CreateFineTuningJobRequest,
    FineTuningCheckpointPermission,
    FineTuningExport,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEstimate,
    FineTuningJobEvent,
)
from tunewright.api.idempotency import IDEMPOTENT, found
from tunewright.api.pagination import bracket_map, check_choice, check_limit, edge_ids
from tunewright.api.schemas import CursorPage, CursorPageWithIds, DeletedObject
from tunewright.api.scopes import SCOPE, SCOPE_ACCESS

if TYPE_CHECKING:
    from tunewright.storage.base import Stores

STREAM_DESCRIPTION = (
    "Tunewright extension. `true`: answer `text/event-stream`, one `data: <fine_tuning.job.event>` frame per "
    "event, oldest first, after `after` (exclusive) or from the first event, until the job has ended; then "
    "`data: [DONE]`. `limit` is ignored."
)


def reread_job(stores: Stores, project_id: str, job_id: str) -> FineTuningJob | None:
    """The job a request created, as `POST /v1/fine_tuning/jobs` answers it (for the idempotency layer)."""
    return found(lambda: FineTuningJob.from_record(stores.metadata.get_job(job_id, project_id=project_id)))


def reread_export(stores: Stores, project_id: str, resource: str) -> FineTuningExport | None:
    """The export a request created (`<job id>/<export id>`), as the exports route answers it."""
    job_id, _, export_id = resource.partition("/")
    return found(
        lambda: FineTuningExport.from_record(
            stores.metadata.get_export(export_id, job_id=job_id, project_id=project_id)
        )
    )


class JobsController(Controller):
    """`/v1/fine_tuning/jobs`."""

    path = "/v1/fine_tuning/jobs"
    guards = [require_project]
    opt = {SCOPE: "fine_tuning"}
    tags = ["Fine-tuning"]

    @post("/", status_code=200, sync_to_thread=True, opt={IDEMPOTENT: reread_job})
    def create_job(
        self,
        stores: AppStores,
        settings: AppSettings,
        engine: AppEngine,
        principal: Caller,
        data: JSONBody[CreateFineTuningJobRequest],
    ) -> FineTuningJob:
        """Create a fine-tuning job; it starts in `validating_files`."""
        return FineTuningJob.from_record(service.create_job(stores, settings, engine, data, principal))

    @post("/estimate", status_code=200, sync_to_thread=True, opt={SCOPE_ACCESS: "read"})  # changes nothing
    def estimate_job(
        self,
        stores: AppStores,
        settings: AppSettings,
        engine: AppEngine,
        principal: Caller,
        data: JSONBody[CreateFineTuningJobRequest],
    ) -> FineTuningJobEstimate:
        """Tunewright's: what a job with this body would train, cost and take; the same errors as creating it."""
        return service.estimate_job(stores, settings, engine, data, principal)

    @get("/")
    async def list_jobs(
        self,
        request: Request[Any, Any, Any],
        stores: AppStores,
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 20,
    ) -> CursorPage[FineTuningJob]:
        """List the project's jobs, newest first; `metadata[k]=v` filters."""
        # The caller comes from the request, not as a second dependency: Litestar resolves two dependencies
        # in an anyio task group (two tasks a request), which cost this hot path more than its query.
        principal = current_principal(request)
        state = request.app.state
        body = await job_page(
            stores,
            state.job_pages,
            state.job_list_versions,
            project_id=principal.project_id or "",
            after=after,
            limit=check_limit(limit, maximum=100),
            metadata=bracket_map(request.query_params, "metadata"),
        )
        # The page's JSON as rendered (api/fine_tuning/list_cache.py); Litestar sends bytes as they are.
        return cast("CursorPage[FineTuningJob]", body)

    @get("/{fine_tuning_job_id:str}", sync_to_thread=False)
    def retrieve_job(self, stores: AppStores, principal: Caller, fine_tuning_job_id: FromPath[str]) -> FineTuningJob:
        """Return one job."""
        record = service.get_job(stores, fine_tuning_job_id, project_id=principal.project_id or "")
        return FineTuningJob.from_record(record)

    @post("/{fine_tuning_job_id:str}/cancel", status_code=200, sync_to_thread=True)
    def cancel_job(self, stores: AppStores, principal: Caller, fine_tuning_job_id: FromPath[str]) -> FineTuningJob:
        """Cancel a job that has not ended."""
        return self._change(stores, principal, fine_tuning_job_id, "cancel")

    @post("/{fine_tuning_job_id:str}/pause", status_code=200, sync_to_thread=True)
    def pause_job(self, stores: AppStores, principal: Caller, fine_tuning_job_id: FromPath[str]) -> FineTuningJob:
        """Pause a running job."""
        return self._change(stores, principal, fine_tuning_job_id, "pause")

    @post("/{fine_tuning_job_id:str}/resume", status_code=200, sync_to_thread=True)
    def resume_job(self, stores: AppStores, principal: Caller, fine_tuning_job_id: FromPath[str]) -> FineTuningJob:
        """Resume a paused job (it goes back to `queued`)."""
        return self._change(stores, principal, fine_tuning_job_id, "resume")

    @staticmethod
    def _change(stores: Stores, principal: Principal, job_id: str, action: str) -> FineTuningJob:
        record = service.change_state(stores, job_id, action, project_id=principal.project_id or "")
        return FineTuningJob.from_record(record)

    @get("/{fine_tuning_job_id:str}/events", sync_to_thread=True, operation_class=events_stream.ListEventsOperation)
    def list_events(
        self,
        stores: AppStores,
        principal: Caller,
        event_streams: NamedDependency[StreamSlots],
        fine_tuning_job_id: FromPath[str],
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 20,
        stream: Annotated[bool, QueryParameter(description=STREAM_DESCRIPTION)] = False,
    ) -> CursorPage[FineTuningJobEvent] | Stream:
        """A job's events, newest first; `stream=true`: server-sent events, oldest first, until the job ends."""
        project_id = principal.project_id or ""
        if stream:
            return events_stream.event_stream(
                stores, event_streams, fine_tuning_job_id, key_id=principal.key_id, project_id=project_id, after=after
            )
        service.get_job(stores, fine_tuning_job_id, project_id=project_id)
        page = stores.metadata.list_events(
            fine_tuning_job_id, project_id=project_id, after=after, limit=check_limit(limit, maximum=100)
        )
        return CursorPage(data=[FineTuningJobEvent.from_record(r) for r in page.items], has_more=page.has_more)

    @get("/{fine_tuning_job_id:str}/checkpoints", sync_to_thread=False)
    def list_checkpoints(
        self,
        stores: AppStores,
        principal: Caller,
        fine_tuning_job_id: FromPath[str],
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 10,
    ) -> CursorPageWithIds[FineTuningJobCheckpoint]:
        """A job's published checkpoints, newest first."""
        project_id = principal.project_id or ""
        service.get_job(stores, fine_tuning_job_id, project_id=project_id)
        page = stores.metadata.list_checkpoints(
            fine_tuning_job_id, project_id=project_id, after=after, limit=check_limit(limit, maximum=100)
        )
        first_id, last_id = edge_ids(page.items)
        return CursorPageWithIds(
            data=[FineTuningJobCheckpoint.from_record(r) for r in page.items],
            first_id=first_id,
            last_id=last_id,
            has_more=page.has_more,
        )


class ExportsController(Controller):
    """`/v1/fine_tuning/jobs/{id}/exports` (Tunewright's): a job's model as a file to take away."""

    path = "/v1/fine_tuning/jobs/{fine_tuning_job_id:str}/exports"
    guards = [require_project]
    opt = {SCOPE: "fine_tuning"}
    tags = ["Fine-tuning"]

    @post("/", status_code=200, sync_to_thread=True, opt={IDEMPOTENT: reread_export})
    def create_export(
        self,
        stores: AppStores,
        principal: Caller,
        fine_tuning_job_id: FromPath[str],
        data: JSONBody[CreateFineTuningExportRequest],
    ) -> FineTuningExport:
        """Queue an export of a succeeded job's model (or one of its checkpoints) for a training worker."""
        record = exports.create_export(stores, fine_tuning_job_id, data, project_id=principal.project_id or "")
        return FineTuningExport.from_record(record)

    @get("/", sync_to_thread=False)
    def list_exports(
        self,
        stores: AppStores,
        principal: Caller,
        fine_tuning_job_id: FromPath[str],
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 20,
    ) -> CursorPageWithIds[FineTuningExport]:
        """A job's exports, newest first."""
        page = exports.list_exports(
            stores,
            fine_tuning_job_id,
            project_id=principal.project_id or "",
            after=after,
            limit=check_limit(limit, maximum=100),
        )
        first_id, last_id = edge_ids(page.items)
        return CursorPageWithIds(
            data=[FineTuningExport.from_record(r) for r in page.items],
            first_id=first_id,
            last_id=last_id,
            has_more=page.has_more,
        )

    @get("/{export_id:str}", sync_to_thread=False)
    def retrieve_export(
        self, stores: AppStores, principal: Caller, fine_tuning_job_id: FromPath[str], export_id: FromPath[str]
    ) -> FineTuningExport:
        """One export of a job: its status, and its file once written."""
        record = exports.get_export(stores, fine_tuning_job_id, export_id, project_id=principal.project_id or "")
        return FineTuningExport.from_record(record)


class CheckpointPermissionsController(Controller):
    """`/v1/fine_tuning/checkpoints/{model}/permissions`."""

    path = "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:str}/permissions"
    guards = [require_project_or_admin]
    opt = {SCOPE: "fine_tuning"}
    tags = ["Fine-tuning"]

    @get("/", sync_to_thread=False)
    def list_permissions(
        self,
        stores: AppStores,
        principal: Caller,
        fine_tuned_model_checkpoint: FromPath[str],
        project_id: FromQuery[str | None] = None,
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 10,
        order: FromQuery[str] = "descending",
    ) -> CursorPageWithIds[FineTuningCheckpointPermission]:
        """Projects a model is shared with."""
        direction = check_choice(order, ("ascending", "descending"), param="order")
        page = permissions.list_permissions(
            stores,
            fine_tuned_model_checkpoint,
            principal,
            project_id=project_id,
            after=after,
            limit=check_limit(limit, maximum=100),
            order="asc" if direction == "ascending" else "desc",
        )
        first_id, last_id = edge_ids(page.items)
        return CursorPageWithIds(
            data=[FineTuningCheckpointPermission.from_record(r) for r in page.items],
            first_id=first_id,
            last_id=last_id,
            has_more=page.has_more,
        )

    @post("/", status_code=200, sync_to_thread=True)
    def create_permissions(
        self,
        stores: AppStores,
        principal: Caller,
        fine_tuned_model_checkpoint: FromPath[str],
        data: JSONBody[CreateFineTuningCheckpointPermissionRequest],
    ) -> CursorPageWithIds[FineTuningCheckpointPermission]:
        """Share a model with other projects of the organization."""
        records = permissions.create_permissions(stores, fine_tuned_model_checkpoint, data.project_ids, principal)
        first_id, last_id = edge_ids(records)
        return CursorPageWithIds(
            data=[FineTuningCheckpointPermission.from_record(r) for r in records],
            first_id=first_id,
            last_id=last_id,
            has_more=False,
        )

    @delete("/{permission_id:str}", status_code=200, sync_to_thread=True)
    def delete_permission(
        self,
        stores: AppStores,
        principal: Caller,
        fine_tuned_model_checkpoint: FromPath[str],
        permission_id: FromPath[str],
    ) -> DeletedObject:
        """Stop sharing a model with one project."""
        permissions.delete_permission(stores, fine_tuned_model_checkpoint, permission_id, principal)
        return DeletedObject(id=permission_id, object="checkpoint.permission")


ROUTES = [JobsController, ExportsController, CheckpointPermissionsController]

"""HTTP routes of /v1/models."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get
from litestar.params import FromPath

from tunewright.api.auth import Caller, require_project
from tunewright.api.models import service
from tunewright.api.models.schemas import ListModelsResponse, Model
from tunewright.api.schemas import DeletedObject


class ModelsController(Controller):
    """`/v1/models`; model ids contain colons (`ft:base:org:suffix:id`)."""

    path = "/v1/models"
    guards = [require_project]
    tags = ["Models"]

    @get("/", sync_to_thread=False)
    def list_models(self, request: Request[Any, Any, Any], principal: Caller) -> ListModelsResponse:
        """Base models and the project's fine-tuned models."""
        state = request.app.state
        models = service.list_models(
            state.stores, state.settings, project_id=principal.project_id or "", started_at=state.started_at
        )
        return ListModelsResponse(data=models)

    @get("/{model:str}", sync_to_thread=False)
    def retrieve_model(self, request: Request[Any, Any, Any], principal: Caller, model: FromPath[str]) -> Model:
        """Return one model."""
        state = request.app.state
        return service.get_model(
            state.stores,
            state.settings,
            model,
            project_id=principal.project_id or "",
            started_at=state.started_at,
        )

    @delete("/{model:str}", status_code=200, sync_to_thread=True)
    def delete_model(self, request: Request[Any, Any, Any], principal: Caller, model: FromPath[str]) -> DeletedObject:
        """Delete a fine-tuned model the project owns."""
        state = request.app.state
        service.delete_model(
            state.stores, state.settings, model, project_id=principal.project_id or "", engine=state.engine
        )
        return DeletedObject(id=model, object="model")


ROUTES = [ModelsController]

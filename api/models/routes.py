"""HTTP routes of /v1/models."""

from __future__ import annotations

from litestar import Controller, delete, get
from litestar.params import FromPath

from tunewright.api.auth import Caller, require_project
from tunewright.api.dependencies import AppEngine, AppSettings, AppStores
from tunewright.api.models import service
from tunewright.api.models.schemas import ListModelsResponse, Model
from tunewright.api.schemas import DeletedObject
from tunewright.api.scopes import SCOPE


class ModelsController(Controller):
    """`/v1/models`; model ids contain colons (`ft:base:org:suffix:id`)."""

    path = "/v1/models"
    guards = [require_project]
    opt = {SCOPE: "model"}
    tags = ["Models"]

    @get("/", sync_to_thread=False)
    def list_models(self, stores: AppStores, settings: AppSettings, principal: Caller) -> ListModelsResponse:
        """Base models and the project's fine-tuned models."""
        models = service.list_models(stores, settings, project_id=principal.project_id or "")
        return ListModelsResponse(data=models)

    @get("/{model:str}", sync_to_thread=False)
    def retrieve_model(
        self, stores: AppStores, settings: AppSettings, principal: Caller, model: FromPath[str]
    ) -> Model:
        """Return one model."""
        return service.get_model(stores, settings, model, project_id=principal.project_id or "")

    @delete("/{model:str}", status_code=200, sync_to_thread=True)
    def delete_model(
        self, stores: AppStores, settings: AppSettings, engine: AppEngine, principal: Caller, model: FromPath[str]
    ) -> DeletedObject:
        """Delete a fine-tuned model the project owns."""
        service.delete_model(
            stores, settings, model, project_id=principal.project_id or "", engine=engine, actor=principal.actor
        )
        return DeletedObject(id=model, object="model")


ROUTES = [ModelsController]

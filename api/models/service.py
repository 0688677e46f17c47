"""Rules of /v1/models: configured base models plus the project's own and shared fine-tuned models."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tunewright.api.errors import PermissionDeniedError
from tunewright.api.fine_tuning.service import model_not_found
from tunewright.api.models.schemas import Model
from tunewright.storage.errors import NotFound

if TYPE_CHECKING:
    from tunewright.inference.engine import InferenceEngine
    from tunewright.storage.audit import AuditActor
    from tunewright.storage.base import Stores
    from tunewright.storage.records import ModelRecord
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)

BASE_OWNER = "tunewright"


def _base(model_id: str, created: int) -> Model:
    return Model(id=model_id, created=created, owned_by=BASE_OWNER)


def _tuned(record: ModelRecord) -> Model:
    return Model(id=record.id, created=record.created, owned_by=record.owned_by)


def list_models(stores: Stores, settings: Settings, *, project_id: str) -> list[Model]:
    """Base models first (in configuration order), then fine-tuned models, oldest first.

    A base model's `created` is when the database was first migrated, so every API process answers the same.
    """
    created = stores.metadata.database_created_at()
    models = [_base(model_id, created) for model_id in settings.base_models]
    models.extend(_tuned(r) for r in stores.metadata.list_models(project_id=project_id))
    return models


def get_model(stores: Stores, settings: Settings, model: str, *, project_id: str) -> Model:
    """Return a base model or a model the project owns or was granted; 404 otherwise."""
    if model in settings.base_models:
        return _base(model, stores.metadata.database_created_at())
    try:
        return _tuned(stores.metadata.get_model(model, project_id=project_id))
    except NotFound:
        raise model_not_found(model, param=None, status=404) from None


def delete_model(
    stores: Stores,
    settings: Settings,
    model: str,
    *,
    project_id: str,
    engine: InferenceEngine | None = None,
    actor: AuditActor | None = None,
) -> None:
    """Delete a model the project owns (rows first, then the engine's copies, adapter blobs after).

    A fine-tuned model goes with its job's checkpoint models (and their checkpoints); a checkpoint model with its
    checkpoint. Permissions granted on any of them end with it, each audited with `actor` as the deleter.
    """
    if model in settings.base_models:
        raise PermissionDeniedError(f"Base model `{model}` cannot be deleted.")
    try:
        deleted = stores.metadata.delete_model(model, project_id=project_id, actor=actor)
    except NotFound:
        try:
            stores.metadata.get_model(model, project_id=project_id)
        except NotFound:
            raise model_not_found(model, param=None, status=404) from None
        raise PermissionDeniedError(
            f"Model `{model}` is shared with this project but owned by another; only its owner can delete it."
        ) from None
    for record in deleted:
        if engine is not None:
            engine.forget(record.id)
    for record in deleted:
        try:
            stores.blobs.delete_prefix(record.adapter_key.rstrip("/") + "/")
        except Exception:  # the model row is gone: it is no longer servable; a stray blob is only logged
            logger.exception("could not delete adapter blobs of %s", record.id)

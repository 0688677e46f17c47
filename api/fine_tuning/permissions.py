"""Rules of checkpoint permissions: the owning project shares a model with projects of its organization."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from tunewright.api.errors import InvalidRequestError, NotFoundError, echo
from tunewright.api.fine_tuning.service import model_not_found
from tunewright.storage.errors import NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.records import PermissionRecord

if TYPE_CHECKING:
    from tunewright.api.auth import Principal
    from tunewright.storage.base import Stores
    from tunewright.storage.records import ModelRecord, Page


def owned_model(stores: Stores, model: str, principal: Principal) -> ModelRecord:
    """Return the model the caller may share: its project's own, or, for an admin key, its organization's.

    The operator key without an `OpenAI-Organization` header reaches every organization's models; the model
    names its organization, whose projects it may be shared with. A model merely shared with the caller's
    project cannot be re-shared: 404, as for an unknown model.
    """
    try:
        if principal.project_id is not None:
            return stores.metadata.get_owned_model(model, project_id=principal.project_id)
        return stores.metadata.get_organization_model(model, organization_id=principal.organization_id)
    except NotFound:
        raise model_not_found(model, param="fine_tuned_model_checkpoint", status=404) from None


def create_permissions(
    stores: Stores, model: str, project_ids: list[str], principal: Principal
) -> list[PermissionRecord]:
    """Share `model` with each project (same organization, active); return the permissions, new or existing."""
    record = owned_model(stores, model, principal)
    for index, project_id in enumerate(project_ids):
        try:
            project = stores.metadata.get_project(project_id, organization_id=record.organization_id)
        except NotFound:
            project = None
        if project is None or project.status != "active":
            raise InvalidRequestError(
                f"Invalid 'project_ids[{index}]': no active project {echo(project_id)} in this organization.",
                param=f"project_ids[{index}]",
                code="invalid_value",
            )
    now = int(time.time())
    grants = [
        PermissionRecord(
            id=new_id("permission"),
            model=record.id,
            owner_project_id=record.project_id,
            project_id=project_id,
            created_at=now,
        )
        for project_id in dict.fromkeys(project_ids)
    ]
    stores.metadata.create_permissions(grants, actor=principal.actor)
    wanted = set(project_ids)
    page = stores.metadata.list_permissions(
        record.id, owner_project_id=record.project_id, project_id=None, after=None, limit=10_000, order="asc"
    )
    return [p for p in page.items if p.project_id in wanted]


def list_permissions(
    stores: Stores,
    model: str,
    principal: Principal,
    *,
    project_id: str | None,
    after: str | None,
    limit: int,
    order: str,
) -> Page[PermissionRecord]:
    """Permissions on the caller's model."""
    record = owned_model(stores, model, principal)
    return stores.metadata.list_permissions(
        record.id,
        owner_project_id=record.project_id,
        project_id=project_id,
        after=after,
        limit=limit,
        order=order,
    )


def delete_permission(stores: Stores, model: str, permission_id: str, principal: Principal) -> PermissionRecord:
    """Revoke one permission on the caller's model."""
    record = owned_model(stores, model, principal)
    try:
        return stores.metadata.delete_permission(
            permission_id, model_id=record.id, owner_project_id=record.project_id, actor=principal.actor
        )
    except NotFound:
        raise NotFoundError(
            f"No such checkpoint permission: {echo(permission_id)}",
            param="permission_id",
            code="permission_not_found",
        ) from None

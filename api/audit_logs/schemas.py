"""Wire objects of /v1/organization/audit_logs: OpenAI's `AuditLog` and its actor.

An entry carries its payload under a key named for its type (`"project.created": {"id": …, "data": …}`), which a
Struct cannot declare for every type, so an entry goes to the wire as a dict built from the `AuditLog` Struct
(its fixed fields) and that one key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from tunewright.api.admin.service import OPERATOR_USER_EMAIL, OPERATOR_USER_ID
from tunewright.api.schemas import Response

if TYPE_CHECKING:
    from tunewright.storage.records import AuditLogRecord


class AuditLogActorUser(Response, kw_only=True):
    """`AuditLogActorUser`: the operator's synthetic user, who owns every key but service accounts' keys."""

    id: str
    email: str


class AuditLogActorServiceAccount(Response, kw_only=True):
    """`AuditLogActorServiceAccount`."""

    id: str


class AuditLogActorApiKey(Response, kw_only=True):
    """`AuditLogActorApiKey`: the key's id, and its owner (a user or a service account)."""

    id: str
    type: Literal["user", "service_account"]
    user: AuditLogActorUser | UnsetType = UNSET
    service_account: AuditLogActorServiceAccount | UnsetType = UNSET


class AuditLogActor(Response, kw_only=True):
    """`AuditLogActor`: always `api_key` here (there are no dashboard sessions); the operator key's id is `operator`."""

    type: Literal["session", "api_key"]
    api_key: AuditLogActorApiKey


class AuditLogProject(Response, kw_only=True):
    """`AuditLog.project`: the project the change was scoped to, with its name when the entry was written."""

    id: str
    name: str | UnsetType = UNSET


class AuditLog(Response, kw_only=True):
    """`AuditLog` without its payload: `project` is left out for a change scoped to no project."""

    id: str
    type: str
    effective_at: int
    project: AuditLogProject | UnsetType = UNSET
    actor: AuditLogActor | None

    @classmethod
    def wire(cls, record: AuditLogRecord) -> dict[str, Any]:
        """The entry as the wire carries it: these fields, then the payload under the key named for its type."""
        project = UNSET
        if record.project_id is not None:
            project = AuditLogProject(id=record.project_id, name=record.project_name or UNSET)
        entry = cls(
            id=record.id,
            type=record.type,
            effective_at=record.effective_at,
            project=project,
            actor=_actor(record),
        )
        return {**msgspec.to_builtins(entry), record.type: record.details}


def _actor(record: AuditLogRecord) -> AuditLogActor | None:
    """The key that made the change; None when none did."""
    if record.actor_kind is None or record.actor_key_id is None:
        return None
    if record.actor_kind == "service_account":
        account = AuditLogActorServiceAccount(id=record.actor_service_account_id or "")
        key = AuditLogActorApiKey(id=record.actor_key_id, type="service_account", service_account=account)
    else:
        user = AuditLogActorUser(id=OPERATOR_USER_ID, email=OPERATOR_USER_EMAIL)
        key = AuditLogActorApiKey(id=record.actor_key_id, type="user", user=user)
    return AuditLogActor(type="api_key", api_key=key)

"""The audit log: `record_audit(conn, actor, type, …)`, one call inside the transaction of the change it records.

Every store method that changes something an organization's admins audit takes a keyword-only
`actor: AuditActor | None` (the key that asked; None when nothing but the store itself acted, as in tests) and
calls `record_audit` on its own connection before it commits, as `storage/outbox.py` writes webhook deliveries:
an entry exists exactly when its change committed. A feature that adds such a change (a rate limit, a spend
limit) does the same, with the event type and payload of OpenAI's `AuditLog` object for that change:

    record_audit(conn, actor, "rate_limit.updated", project_id=project_id,
                 details={"id": rate_limit_id, "changes_requested": {"max_requests_per_1_minute": 100}})

`details` is the object OpenAI shows under the key named for the type; its `id` is the entry's resource (what
`resource_ids` filters on). The entry's organization is the project's (looked up here) unless given; the
project's name is kept as it is when the entry is written. The API lists entries (api/audit_logs/).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from tunewright.storage.ids import new_id
from tunewright.storage.records import AuditLogRecord
from tunewright.storage.rows import to_params

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tunewright.storage.db import Connection

# Types OpenAI's `AuditLogEventType` names, for what this server records.
API_KEY_CREATED = "api_key.created"
API_KEY_UPDATED = "api_key.updated"
API_KEY_DELETED = "api_key.deleted"
PROJECT_CREATED = "project.created"
PROJECT_UPDATED = "project.updated"
PROJECT_ARCHIVED = "project.archived"
SERVICE_ACCOUNT_CREATED = "service_account.created"
SERVICE_ACCOUNT_UPDATED = "service_account.updated"
SERVICE_ACCOUNT_DELETED = "service_account.deleted"
CHECKPOINT_PERMISSION_CREATED = "checkpoint.permission.created"
CHECKPOINT_PERMISSION_DELETED = "checkpoint.permission.deleted"
RATE_LIMIT_UPDATED = "rate_limit.updated"
RATE_LIMIT_DELETED = "rate_limit.deleted"

# Tunewright's own types: OpenAI's enum has none for webhook endpoints (docs/openai-compatibility.md).
WEBHOOK_ENDPOINT_CREATED = "webhook_endpoint.created"
WEBHOOK_ENDPOINT_UPDATED = "webhook_endpoint.updated"
WEBHOOK_ENDPOINT_DELETED = "webhook_endpoint.deleted"
WEBHOOK_ENDPOINT_SECRET_ROTATED = "webhook_endpoint.secret_rotated"  # noqa: S105 - an event type, not a secret
# Nor for spend limits and alerts.
SPEND_LIMIT_UPDATED = "spend_limit.updated"
SPEND_LIMIT_DELETED = "spend_limit.deleted"
SPEND_ALERT_CREATED = "spend_alert.created"
SPEND_ALERT_UPDATED = "spend_alert.updated"
SPEND_ALERT_DELETED = "spend_alert.deleted"
TUNEWRIGHT_EVENT_TYPES = (
    WEBHOOK_ENDPOINT_CREATED,
    WEBHOOK_ENDPOINT_UPDATED,
    WEBHOOK_ENDPOINT_DELETED,
    WEBHOOK_ENDPOINT_SECRET_ROTATED,
    SPEND_LIMIT_UPDATED,
    SPEND_LIMIT_DELETED,
    SPEND_ALERT_CREATED,
    SPEND_ALERT_UPDATED,
    SPEND_ALERT_DELETED,
)


class AuditActor(msgspec.Struct, kw_only=True, frozen=True):
    """The key that made a change: its id and kind (`admin`, `project`, `service_account`, `operator`)."""

    key_id: str
    kind: str
    service_account_id: str | None = None


OPERATOR_ACTOR = AuditActor(key_id="operator", kind="operator")
"""The operator: `TUNEWRIGHT_ADMIN_KEY` over HTTP, and the `tunewright` command line on the data dir."""


class ActorMatch(msgspec.Struct, kw_only=True, frozen=True):
    """Entries whose key id or service account id is one of `ids`, or whose key kind is one of `kinds`."""

    ids: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()


class AuditLogFilter(msgspec.Struct, kw_only=True, frozen=True):
    """What `list_audit_logs` keeps; a None list keeps everything, an empty one nothing; all of them must hold."""

    event_types: tuple[str, ...] | None = None
    project_ids: tuple[str, ...] | None = None
    resource_ids: tuple[str, ...] | None = None
    actors: tuple[ActorMatch, ...] = ()
    effective_min: int | None = None
    effective_max: int | None = None


def record_audit(
    conn: Connection,
    actor: AuditActor | None,
    event_type: str,
    *,
    details: Mapping[str, Any],
    project_id: str | None = None,
    organization_id: str | None = None,
) -> AuditLogRecord:
    """Write one entry in the caller's transaction and return it.

    Args:
        conn: the open transaction of the change the entry records.
        actor: the key that made the change; None when no key did.
        event_type: OpenAI's type for the change (`project.created`, …) or one of `TUNEWRIGHT_EVENT_TYPES`.
        details: the payload of that type, in OpenAI's shape; `details["id"]` is the changed object's id.
        project_id: the project the change is scoped to (for a project event, the project itself).
        organization_id: the organization; looked up from `project_id` when not given.
    """
    project_name = None
    if project_id is not None:
        row = conn.run("audit_project", {"id": project_id}).fetchone()
        if row is not None:
            project_name = row["name"]
            organization_id = organization_id or row["organization_id"]
    record = AuditLogRecord(
        id=new_id("audit_log"),
        organization_id=organization_id,
        project_id=project_id,
        project_name=project_name,
        type=event_type,
        effective_at=int(time.time()),
        actor_kind=None if actor is None else actor.kind,
        actor_key_id=None if actor is None else actor.key_id,
        actor_service_account_id=None if actor is None else actor.service_account_id,
        resource_id=details.get("id"),
        details=dict(details),
    )
    conn.run("insert_audit_log", to_params(record))
    return record

"""Rules of /v1/organization/audit_logs: who sees which entries, and the filters as the SDK sends them.

Scoping is the admin routes' (api/admin/service.py): an organization admin key sees its organization's entries;
the operator key every organization's, or one with an `OpenAI-Organization` header.

Filters (all of them must hold; each list holds at most `MAX_FILTER_VALUES` values): `event_types[]`,
`project_ids[]`, `resource_ids[]` (the changed object's id), `actor_ids[]` (a key id, a service account id, or
the id of the operator's user, `user-operator`, which owns every key but service accounts'), `actor_emails[]`
(only the operator user's email names anyone here), and `effective_at[gt|gte|lt|lte]` (unix seconds). The SDK
sends lists as `name[]=…`; `name=…` is taken too. An unknown event type matches nothing. `tenant_only=true`
answers an empty page: this server records no tenant-scoped events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.api.admin.service import OPERATOR_USER_EMAIL, OPERATOR_USER_ID, organization_scope
from tunewright.api.audit_logs.schemas import AuditLog
from tunewright.api.errors import InvalidRequestError, echo
from tunewright.api.pagination import bracket_list, bracket_map, edge_ids
from tunewright.api.schemas import CursorPageWithIds
from tunewright.storage.audit import ActorMatch, AuditLogFilter
from tunewright.storage.errors import InvalidCursor

if TYPE_CHECKING:
    from litestar.datastructures import MultiDict

    from tunewright.api.auth import Principal
    from tunewright.storage.base import Stores

MAX_FILTER_VALUES = 100
OPERATOR_USER_KINDS = ("admin", "project", "operator")
"""Kinds of the keys the operator's user owns (every key but a service account's)."""
_BOUNDS = ("gt", "gte", "lt", "lte")


def list_audit_logs(
    stores: Stores,
    principal: Principal,
    query: MultiDict[Any],
    *,
    after: str | None,
    before: str | None,
    limit: int,
    tenant_only: bool,
) -> CursorPageWithIds[dict[str, Any]]:
    """Entries the caller may see that pass the query's filters, newest first."""
    scope = organization_scope(stores, principal)
    filters = parse_filters(query)
    if after is not None and before is not None:
        raise InvalidRequestError("Give either 'after' or 'before', not both.", param="before", code="invalid_value")
    if tenant_only:
        return CursorPageWithIds(data=[], first_id=None, last_id=None, has_more=False)
    try:
        page = stores.metadata.list_audit_logs(
            organization_id=None if scope is None else scope.id,
            filters=filters,
            after=after,
            before=before,
            limit=limit,
        )
    except InvalidCursor:
        param = "after" if before is None else "before"
        raise InvalidRequestError(
            f"Invalid '{param}': {echo(before or after or '')} is not an audit log entry of this organization.",
            param=param,
            code="invalid_value",
        ) from None
    first_id, last_id = edge_ids(page.items)
    return CursorPageWithIds(
        data=[AuditLog.wire(r) for r in page.items], first_id=first_id, last_id=last_id, has_more=page.has_more
    )


def parse_filters(query: MultiDict[Any]) -> AuditLogFilter:
    """The filters of the query string.

    Raises:
        InvalidRequestError: a list with too many values, or an `effective_at` bound that is unknown or not an
            integer.
    """
    lists = {name: _values(query, name) for name in ("event_types", "project_ids", "resource_ids")}
    actors = []
    actor_ids = _values(query, "actor_ids")
    if actor_ids is not None:
        kinds = OPERATOR_USER_KINDS if OPERATOR_USER_ID in actor_ids else ()
        actors.append(ActorMatch(ids=actor_ids, kinds=kinds))
    actor_emails = _values(query, "actor_emails")
    if actor_emails is not None:
        actors.append(ActorMatch(kinds=OPERATOR_USER_KINDS if OPERATOR_USER_EMAIL in actor_emails else ()))
    low, high = _effective_range(query)
    return AuditLogFilter(**lists, actors=tuple(actors), effective_min=low, effective_max=high)


def _values(query: MultiDict[Any], name: str) -> tuple[str, ...] | None:
    values = bracket_list(query, name)
    if values is not None and len(values) > MAX_FILTER_VALUES:
        raise InvalidRequestError(
            f"Invalid '{name}': at most {MAX_FILTER_VALUES} values, got {len(values)}.",
            param=name,
            code="invalid_value",
        )
    return None if values is None else tuple(values)


def _effective_range(query: MultiDict[Any]) -> tuple[int | None, int | None]:
    """`effective_at[gt|gte|lt|lte]` as one inclusive range of unix seconds (None: unbounded)."""
    bounds = bracket_map(query, "effective_at") or {}
    values: dict[str, int] = {}
    for key, text in bounds.items():
        param = f"effective_at[{key}]"
        if key not in _BOUNDS:
            raise InvalidRequestError(
                f"Unrecognized request argument supplied: {echo(param)} (expected one of gt, gte, lt, lte).",
                param=param,
                code="unknown_parameter",
            )
        try:
            values[key] = int(text)
        except ValueError:
            raise InvalidRequestError(
                f"Invalid '{param}': expected an integer (unix seconds), got '{echo(text)}'.",
                param=param,
                code="invalid_type",
            ) from None
    lows = [values[k] + (k == "gt") for k in ("gt", "gte") if k in values]
    highs = [values[k] - (k == "lt") for k in ("lt", "lte") if k in values]
    return (max(lows) if lows else None), (min(highs) if highs else None)

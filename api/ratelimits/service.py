"""Rules of /v1/organization/projects/{project_id}/rate_limits: one limit per base model, admin keys only.

A project can call every configured base model, and its fine-tuned and checkpoint models count against their
base model's limits, so the list holds one `project.rate_limit` per base model (`rl-<model>`, ordered by model).
Scoping is the admin routes' (`api/admin/service.py`): another organization's project is 404. An archived
project's limits can be read, not changed (`project_archived`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msgspec import UNSET

from tunewright.api.admin.service import refuse_archived, scoped_project
from tunewright.api.errors import InvalidRequestError, NotFoundError, echo
from tunewright.api.pagination import edge_ids
from tunewright.api.parameters import unsupported
from tunewright.api.ratelimits.schemas import ProjectRateLimit
from tunewright.api.schemas import CursorPageWithIds
from tunewright.storage.ids import rate_limit_id

if TYPE_CHECKING:
    from tunewright.api.auth import Principal
    from tunewright.api.ratelimits.limiter import RateLimiter
    from tunewright.api.ratelimits.schemas import ProjectRateLimitUpdateRequest
    from tunewright.storage.base import Stores
    from tunewright.storage.records import RateLimitRecord
    from tunewright.storage.settings import Settings

UNSERVED = {
    "max_images_per_1_minute": "does not apply: no model here takes images",
    "max_audio_megabytes_per_1_minute": "does not apply: no model here takes audio",
    "batch_1_day_max_input_tokens": "does not apply: this server has no Batch API",
}


def rate_limit_not_found(rate_limit_id: str) -> NotFoundError:
    """404 for an id that names no base model of this server."""
    return NotFoundError(
        f"No such rate limit: {echo(rate_limit_id)}", param="rate_limit_id", code="rate_limit_not_found"
    )


def view(limiter: RateLimiter, model: str, record: RateLimitRecord | None) -> ProjectRateLimit:
    """The wire object of a model's limits (the defaults where the admin set nothing)."""
    limits = limiter.effective(record)
    return ProjectRateLimit(
        id=rate_limit_id(model),
        model=model,
        max_requests_per_1_minute=limits.requests_per_minute,
        max_tokens_per_1_minute=limits.tokens_per_minute,
        max_requests_per_1_day=limits.requests_per_day or UNSET,
    )


def list_rate_limits(
    stores: Stores,
    settings: Settings,
    limiter: RateLimiter,
    principal: Principal,
    project_id: str,
    *,
    after: str | None,
    before: str | None,
    limit: int,
) -> CursorPageWithIds[ProjectRateLimit]:
    """One limit per base model, by model; `after`/`before` are rate-limit ids of this list."""
    project = scoped_project(stores, principal, project_id)[1]
    records = {record.model: record for record in stores.metadata.list_rate_limits(project_id=project.id)}
    ids = [rate_limit_id(model) for model in sorted(settings.base_models)]
    start, end = 0, len(ids)
    if after is not None:
        start = _position(ids, after, "after") + 1
    if before is not None:
        end = _position(ids, before, "before")
    window = ids[start:end]
    page = window[:limit] if before is None else window[-limit:]
    data = [view(limiter, item.removeprefix("rl-"), records.get(item.removeprefix("rl-"))) for item in page]
    first_id, last_id = edge_ids(data)
    return CursorPageWithIds(data=data, first_id=first_id, last_id=last_id, has_more=len(window) > len(page))


def _position(ids: list[str], cursor: str, param: str) -> int:
    try:
        return ids.index(cursor)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid '{param}': {echo(cursor)} is not an object of this list.", param=param, code="invalid_value"
        ) from None


def update_rate_limit(
    stores: Stores,
    settings: Settings,
    limiter: RateLimiter,
    principal: Principal,
    project_id: str,
    rate_limit_id: str,
    data: ProjectRateLimitUpdateRequest,
) -> ProjectRateLimit:
    """Change the limits sent for one base model of the project; the others keep their values."""
    project = scoped_project(stores, principal, project_id)[1]
    model = rate_limit_id.removeprefix("rl-")
    if not rate_limit_id.startswith("rl-") or model not in settings.base_models:
        raise rate_limit_not_found(rate_limit_id)
    for name, why in UNSERVED.items():
        if getattr(data, name) is not UNSET:
            raise unsupported(name, why)
    refuse_archived(project, "be updated")
    record = stores.metadata.set_rate_limit(
        project_id=project.id,
        model=model,
        max_requests_per_1_minute=_given(data.max_requests_per_1_minute),
        max_tokens_per_1_minute=_given(data.max_tokens_per_1_minute),
        max_requests_per_1_day=_given(data.max_requests_per_1_day),
        actor=principal.actor,
    )
    limiter.forget(project.id)
    return view(limiter, model, record)


def _given(value: int | object) -> int | None:
    return None if value is UNSET else value  # type: ignore[return-value]

"""HTTP routes of /v1/organization/projects/{project_id}/rate_limits: decode, one service call. Admin keys only."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from tunewright.api.auth import Caller, require_admin
from tunewright.api.dependencies import AppSettings, AppStores
from tunewright.api.pagination import check_limit
from tunewright.api.ratelimits import service
from tunewright.api.ratelimits.limiter import AppLimiter
from tunewright.api.ratelimits.schemas import ProjectRateLimit, ProjectRateLimitUpdateRequest
from tunewright.api.schemas import CursorPageWithIds

MAX_LIMIT = 100


class ProjectRateLimitsController(Controller):
    """`/v1/organization/projects/{project_id}/rate_limits`: one limit per base model."""

    path = "/v1/organization/projects/{project_id:str}/rate_limits"
    guards = [require_admin]
    tags = ["Projects"]

    @get("/", sync_to_thread=True)
    def list_rate_limits(
        self,
        stores: AppStores,
        settings: AppSettings,
        limiter: AppLimiter,
        principal: Caller,
        project_id: FromPath[str],
        limit: FromQuery[int] = 100,
        after: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
    ) -> CursorPageWithIds[ProjectRateLimit]:
        """The project's limit on each base model (its fine-tuned models count against their base)."""
        return service.list_rate_limits(
            stores,
            settings,
            limiter,
            principal,
            project_id,
            after=after,
            before=before,
            limit=check_limit(limit, maximum=MAX_LIMIT),
        )

    @post("/{rate_limit_id:str}", status_code=200, sync_to_thread=True)
    def update_rate_limit(
        self,
        stores: AppStores,
        settings: AppSettings,
        limiter: AppLimiter,
        principal: Caller,
        project_id: FromPath[str],
        rate_limit_id: FromPath[str],
        data: JSONBody[ProjectRateLimitUpdateRequest],
    ) -> ProjectRateLimit:
        """Change a model's limits; every API process applies them within a second."""
        return service.update_rate_limit(stores, settings, limiter, principal, project_id, rate_limit_id, data)


ROUTES = [ProjectRateLimitsController]

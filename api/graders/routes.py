"""HTTP routes of /v1/fine_tuning/alpha/graders: validate and run a grader."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from tunewright.api.auth import Caller, require_project
from tunewright.api.dependencies import AppEngine, AppSettings, AppStores
from tunewright.api.graders import service
from tunewright.api.graders.schemas import (
    RunGraderRequest,
    RunGraderResponse,
    ValidateGraderRequest,
    ValidateGraderResponse,
)
from tunewright.api.metrics import Metrics
from tunewright.api.ratelimits.limiter import AppLimiter, Quota
from tunewright.api.scopes import SCOPE


class GradersController(Controller):
    """`/v1/fine_tuning/alpha/graders` (OpenAI's beta graders API)."""

    path = "/v1/fine_tuning/alpha/graders"
    guards = [require_project]
    opt = {SCOPE: "fine_tuning"}
    tags = ["Fine-tuning"]

    @post("/validate", status_code=200, sync_to_thread=True)
    def validate_grader(
        self, stores: AppStores, settings: AppSettings, principal: Caller, data: JSONBody[ValidateGraderRequest]
    ) -> ValidateGraderResponse:
        """Check a grader as a reinforcement job would take it; answer it as sent."""
        return ValidateGraderResponse(grader=service.validate(stores, settings, data.grader, principal))

    @post("/run", status_code=200)
    async def run_grader(
        self,
        request: Request[Any, Any, Any],
        principal: Caller,
        limiter: AppLimiter,
        stores: AppStores,
        settings: AppSettings,
        engine: AppEngine,
        metrics: NamedDependency[Metrics],
        data: JSONBody[RunGraderRequest],
    ) -> RunGraderResponse:
        """Grade `model_sample` for `item` and answer the reward with OpenAI's metadata."""
        limits = Quota(limiter, request.scope["state"])  # type: ignore[typeddict-item]
        return await service.run(stores, settings, engine, data, principal, limits, metrics)


ROUTES = [GradersController]

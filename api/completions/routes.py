"""HTTP routes of the legacy /v1/completions."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from tunewright.api.auth import MODEL_LIMITS, Caller, require_project
from tunewright.api.completions import service
from tunewright.api.completions.schemas import CreateCompletionRequest, CreateCompletionResponse
from tunewright.api.generation import StreamingOperation
from tunewright.api.metrics import Metrics
from tunewright.api.nul_guard import ALLOW_NUL_IN_BODY
from tunewright.api.ratelimits.limiter import AppLimiter, Quota
from tunewright.api.scopes import SCOPE, SCOPE_ACCESS
from tunewright.inference.engine import InferenceEngine
from tunewright.storage.base import Stores
from tunewright.storage.settings import Settings


class CompletionsController(Controller):
    """`/v1/completions`: prompt completion on base models and the project's own or shared fine-tuned models."""

    path = "/v1/completions"
    guards = [require_project]
    opt = {SCOPE: "model"}
    tags = ["Completions"]

    @post(
        "/",
        status_code=200,
        operation_class=StreamingOperation,
        opt={ALLOW_NUL_IN_BODY: True, MODEL_LIMITS: True, SCOPE_ACCESS: "request"},
    )
    async def create_completion(
        self,
        request: Request[Any, Any, Any],
        principal: Caller,
        limiter: AppLimiter,
        stores: NamedDependency[Stores],
        settings: NamedDependency[Settings],
        engine: NamedDependency[InferenceEngine],
        metrics: NamedDependency[Metrics],
        data: JSONBody[CreateCompletionRequest],
    ) -> CreateCompletionResponse | Stream:
        """Complete one or more prompts; `stream: true` answers `text_completion` server-sent events."""
        limits = Quota(limiter, request.scope["state"])  # type: ignore[typeddict-item]
        return await service.create_completion(stores, settings, engine, data, principal, limits, metrics)


ROUTES = [CompletionsController]

"""HTTP routes of the legacy /v1/completions."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.params import JSONBody
from litestar.response import Stream

from tunewright.api.auth import Caller, require_project
from tunewright.api.completions import service
from tunewright.api.completions.schemas import CreateCompletionRequest, CreateCompletionResponse
from tunewright.api.inference_common import StreamingOperation


class CompletionsController(Controller):
    """`/v1/completions`: prompt completion on base models and the project's own or shared fine-tuned models."""

    path = "/v1/completions"
    guards = [require_project]
    tags = ["Completions"]

    @post("/", status_code=200, operation_class=StreamingOperation)
    async def create_completion(
        self,
        request: Request[Any, Any, Any],
        principal: Caller,
        data: JSONBody[CreateCompletionRequest],
    ) -> CreateCompletionResponse | Stream:
        """Complete one or more prompts; `stream: true` answers `text_completion` server-sent events."""
        return await service.create_completion(request.app.state, data, principal)


ROUTES = [CompletionsController]

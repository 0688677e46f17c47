"""HTTP routes of /v1/chat/completions."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.params import JSONBody
from litestar.response import Stream

from tunewright.api.auth import Caller, require_project
from tunewright.api.chat import service
from tunewright.api.chat.schemas import CreateChatCompletionRequest, CreateChatCompletionResponse
from tunewright.api.inference_common import StreamingOperation


class ChatCompletionsController(Controller):
    """`/v1/chat/completions`: base models and the project's own or shared fine-tuned models."""

    path = "/v1/chat/completions"
    guards = [require_project]
    tags = ["Chat"]

    @post("/", status_code=200, operation_class=StreamingOperation)
    async def create_chat_completion(
        self,
        request: Request[Any, Any, Any],
        principal: Caller,
        data: JSONBody[CreateChatCompletionRequest],
    ) -> CreateChatCompletionResponse | Stream:
        """Generate a chat completion; `stream: true` answers `chat.completion.chunk` server-sent events."""
        return await service.create_chat_completion(request.app.state, data, principal)


ROUTES = [ChatCompletionsController]

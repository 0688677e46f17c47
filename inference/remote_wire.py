"""The OpenAI protocol as the remote engine's servers speak it: message shapes, the completion body, errors.

Servers are ``tunewright inference`` nodes or vLLM; both answer OpenAI's shapes with vLLM's additions
(``return_tokens_as_token_ids``, ``max_model_len`` and ``parent`` in the model list). ``inference/remote.py``
describes the conversation.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from tunewright.inference.engine import EngineError

if TYPE_CHECKING:
    import httpx

    from tunewright.inference.engine import GenerationRequest

logger = logging.getLogger(__name__)

TOKEN_ID = "token_id:"  # noqa: S105 - a token of the vocabulary, not a credential
"""How a server names a token with ``return_tokens_as_token_ids``."""


# ------------------------------------------------------------------------------------------ wire


class ErrorBody(msgspec.Struct, kw_only=True):
    """OpenAI's error object (vLLM sends its HTTP status as an integer ``code``)."""

    message: str = "the inference server answered with an error"
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class ErrorEnvelope(msgspec.Struct, kw_only=True):
    """``{"error": {...}}``, or the flat ``{"object": "error", "message", ...}`` of older vLLM releases."""

    error: ErrorBody | None = None
    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class ChunkLogprobs(msgspec.Struct, kw_only=True):
    """A legacy completion chunk's ``logprobs``."""

    tokens: list[str] = msgspec.field(default_factory=list)
    token_logprobs: list[float | None] = msgspec.field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    """One choice of a streamed ``text_completion`` chunk."""

    index: int = 0
    text: str = ""
    logprobs: ChunkLogprobs | None = None
    finish_reason: str | None = None


class Chunk(msgspec.Struct, kw_only=True):
    """A streamed ``text_completion`` chunk, or an error frame."""

    choices: list[ChunkChoice] = msgspec.field(default_factory=list)
    error: ErrorBody | None = None


class ModelCard(msgspec.Struct, kw_only=True):
    """An entry of ``GET /v1/models``."""

    id: str
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(msgspec.Struct, kw_only=True):
    """``GET /v1/models``."""

    data: list[ModelCard]


# -------------------------------------------------------------------------------------- failures


def unavailable(message: str) -> EngineError:
    """503 ``engine_unavailable``: no server could serve the request (a retry may succeed)."""
    return EngineError(message, code="engine_unavailable", status=503)


def server_error(response: httpx.Response) -> EngineError:
    """The ``EngineError`` for a server's non-200 answer: its message, code and param, with its status."""
    if response.status_code == 401:
        logger.error("inference server %s refused the token (TUNEWRIGHT_INFERENCE_TOKEN)", response.request.url)
        return unavailable("The inference server refused the API's credentials.")
    try:
        body = msgspec.json.decode(response.content, type=ErrorEnvelope)
    except msgspec.DecodeError:
        logger.error("inference server answered %d: %.200r", response.status_code, response.content)
        return EngineError("The inference server answered with an error.", code="server_error", status=500)
    error = body.error or ErrorBody(
        message=body.message or ErrorBody.message, type=body.type, param=body.param, code=body.code
    )
    return error_of(error, response.status_code)


def error_of(error: ErrorBody, status: int) -> EngineError:
    """An ``EngineError`` from an error object; a code that is not a string becomes the error's type."""
    code = error.code if isinstance(error.code, str) else (error.type or "server_error")
    return EngineError(error.message, code=code, status=status if status >= 400 else 500, param=error.param)


def model_not_found(base_model: str) -> EngineError:
    """404 ``model_not_found`` naming ``model``: no server serves the base model."""
    return EngineError(
        f"The model `{base_model}` does not exist or you do not have access to it.",
        code="model_not_found",
        status=404,
        param="model",
    )


# ------------------------------------------------------------------------------------- requests


def completion_body(request: GenerationRequest) -> dict[str, Any]:
    """The ``/v1/completions`` body for a generation request: token-id prompt, streamed, tokens named by id.

    The project goes as OpenAI's ``user``: what a node's scheduler shares batch places by (vLLM ignores it).
    """
    params = request.params
    adapter = request.target.adapter
    body: dict[str, Any] = {
        "model": adapter.name if adapter is not None else request.target.base_model,
        "prompt": request.prompt_ids,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "n": request.n,
        "stream": True,
        "logprobs": params.top_logprobs,
        "return_tokens_as_token_ids": True,
    }
    if request.project_id:
        body["user"] = request.project_id  # a node shares its batch places among projects by it
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if params.presence_penalty:
        body["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty:
        body["frequency_penalty"] = params.frequency_penalty
    if params.logit_bias:
        body["logit_bias"] = {str(token): round(bias) for token, bias in params.logit_bias.items()}
    return body


def token_id(name: str) -> int:
    """The id in a ``token_id:<id>`` token name.

    Raises:
        EngineError: the server did not name tokens by id (it ignores ``return_tokens_as_token_ids``).
    """
    if not name.startswith(TOKEN_ID):
        raise no_token_ids()
    return int(name.removeprefix(TOKEN_ID))


def no_token_ids() -> EngineError:
    """The server ignored ``logprobs`` or ``return_tokens_as_token_ids``: its tokens cannot be counted."""
    return EngineError(
        "The inference server does not return token ids (`logprobs` with `return_tokens_as_token_ids`).",
        code="server_error",
        status=500,
    )

"""An inference node: one `LocalEngine` behind the OpenAI protocol as vLLM serves it (`tunewright inference`).

Routes (all but the health checks need `Authorization: Bearer <TUNEWRIGHT_INFERENCE_TOKEN>`, compared in
constant time; errors are OpenAI's envelope):

- `POST /v1/completions`: OpenAI's legacy completions over a prompt of token ids (or text), streamed or not,
  `logprobs` up to 20, and vLLM's `return_tokens_as_token_ids` (logprobs name tokens `token_id:<id>`, so the
  API counts and renders exactly the tokens that were generated). A client that disconnects stops generation.
- `GET /v1/models`: the base models on this machine (with `max_model_len`) and the loaded adapters (`parent`).
- `POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`: vLLM's dynamic LoRA loading.
- `GET /metrics`: Prometheus text (rows in the batches, adapters in memory).
- `GET /healthz` (and vLLM's `/health`): up; models load on their first request.

The node opens the blob store (adapters named `blob://<prefix>`) and no database. Without a token it answers
every request, so `tunewright inference` refuses to start without one unless it listens on loopback.
"""

from __future__ import annotations

import hmac
import os
from typing import TYPE_CHECKING, Any

from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import JSONBody
from litestar.response import Stream
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from tunewright.api.completions.schemas import CreateCompletionResponse
from tunewright.api.errors import AuthenticationError, exception_handlers
from tunewright.api.node import service
from tunewright.api.node.schemas import (
    LoadLoRAAdapterRequest,
    ModelCardList,
    NodeCompletionRequest,
    UnloadLoRAAdapterRequest,
)
from tunewright.inference.local import LocalEngine
from tunewright.storage.registry import open_blob_store
from tunewright.storage.settings import load_settings

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from tunewright.storage.base import BlobStore
    from tunewright.storage.settings import Settings


def require_token(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """The bearer token must equal the node's (none configured: open).

    Raises:
        AuthenticationError: 401 `invalid_inference_token`.
    """
    expected: str | None = connection.app.state.settings.inference_token
    if expected is None:
        return
    scheme, _, given = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise AuthenticationError("Missing or invalid inference token.", code="invalid_inference_token")


@post("/v1/completions", status_code=200, guards=[require_token])
async def create_completion(state: State, data: JSONBody[NodeCompletionRequest]) -> CreateCompletionResponse | Stream:
    """Complete token-id (or text) prompts on a base model or a loaded adapter."""
    return await service.create_completion(state.engine, state.registry, data)


@get("/v1/models", guards=[require_token], sync_to_thread=True)
def list_models(state: State) -> ModelCardList:
    """The base models on this machine and the loaded adapters."""
    return ModelCardList(data=state.registry.cards())


@post("/v1/load_lora_adapter", status_code=200, guards=[require_token], sync_to_thread=True)
def load_lora_adapter(state: State, data: LoadLoRAAdapterRequest) -> Response[str]:
    """Serve an adapter under a name (loaded into memory on its first request)."""
    return Response(state.registry.load(data), media_type=MediaType.TEXT)


@post("/v1/unload_lora_adapter", status_code=200, guards=[require_token], sync_to_thread=True)
def unload_lora_adapter(state: State, data: UnloadLoRAAdapterRequest) -> Response[str]:
    """Stop serving an adapter (its model was deleted); rows already running on it finish."""
    return Response(state.registry.unload(data.lora_name), media_type=MediaType.TEXT)


@get("/metrics", guards=[require_token], sync_to_thread=False, media_type=MediaType.TEXT)
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text exposition of the node's gauges."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


@get(["/healthz", "/health"], sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The node is up (models load on their first request)."""
    return {"status": "ok"}


def node_metrics(engine: LocalEngine) -> CollectorRegistry:
    """Gauges read from the engine at scrape time."""
    registry = CollectorRegistry()
    rows = Gauge("tunewright_inference_active_rows", "Rows running or waiting in the batches.", registry=registry)
    rows.set_function(engine.active_rows)
    loaded = Gauge("tunewright_inference_loaded_adapters", "Adapters in memory.", registry=registry)
    loaded.set_function(lambda: sum(state == "loaded" for state in engine.adapter_states().values()))
    return registry


def create_node(settings: Settings, blobs: BlobStore, engine: LocalEngine | None = None) -> Litestar:
    """The node's app over one `LocalEngine` (a new one over `blobs` unless given; closed at shutdown)."""
    node_engine = engine if engine is not None else LocalEngine(settings, blobs)
    return Litestar(
        route_handlers=[create_completion, list_models, load_lora_adapter, unload_lora_adapter, metrics, healthz],
        state=State(
            {
                "settings": settings,
                "engine": node_engine,
                "registry": service.AdapterRegistry(settings, blobs, node_engine),
                "metrics": node_metrics(node_engine),
            }
        ),
        exception_handlers=exception_handlers(),
        on_shutdown=[node_engine.close],
        openapi_config=None,
        debug=False,
    )


def create_node_from_env() -> Litestar:
    """Entry point granian loads: settings from `TUNEWRIGHT_*` (`tunewright inference` exports its flags)."""
    settings = load_settings(os.environ)
    return create_node(settings, open_blob_store(settings))

"""An inference node: one `LocalEngine` behind the OpenAI protocol as vLLM serves it (`tunewright inference`).

Routes (all but the health checks need `Authorization: Bearer <TUNEWRIGHT_INFERENCE_TOKEN>`, compared in
constant time; errors are OpenAI's envelope):

- `POST /v1/completions`: OpenAI's legacy completions over a prompt of token ids (or text), streamed or not,
  `logprobs` up to 20, and vLLM's `return_tokens_as_token_ids` (logprobs name tokens `token_id:<id>`, so the
  API counts and renders exactly the tokens that were generated). A client that disconnects stops generation.
- `GET /v1/models`: the base models on this machine (with `max_model_len`) and the loaded adapters (`parent`).
- `POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`: vLLM's dynamic LoRA loading.
- `GET /metrics`: Prometheus text (rows in the batches, adapters in memory, the adapter cache's hits, misses and
  evictions).
- `GET /healthz` (and vLLM's `/health`): up; models load on their first request.

The node opens the blob store (adapters named `blob://<prefix>`) and no database. Without a token it answers
every request, so `tunewright inference` refuses to start without one unless it listens on loopback.
"""

from __future__ import annotations

import hmac
import os
from typing import TYPE_CHECKING, Any

from litestar import Litestar, MediaType, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from tunewright.api.bodies import APIRequest
from tunewright.api.completions.schemas import CreateCompletionResponse
from tunewright.api.dependencies import providers
from tunewright.api.errors import AuthenticationError, exception_handlers
from tunewright.api.metrics import AdapterCacheCollector
from tunewright.api.node import service
from tunewright.api.node.schemas import (
    LoadLoRAAdapterRequest,
    ModelCardList,
    NodeCompletionRequest,
    UnloadLoRAAdapterRequest,
)
from tunewright.inference.engine import InferenceEngine
from tunewright.inference.local import LocalEngine
from tunewright.storage.registry import open_blob_store
from tunewright.storage.settings import Settings, load_settings

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler
    from litestar.types import Guard

    from tunewright.storage.base import BlobStore


def token_guard(expected: str | None) -> Guard:
    """The guard a node's routes share: the bearer token must equal `expected` (None: open)."""

    def require_token(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
        """Compare the bearer token in constant time.

        Raises:
            AuthenticationError: 401 `invalid_inference_token`.
        """
        if expected is None:
            return
        scheme, _, given = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise AuthenticationError("Missing or invalid inference token.", code="invalid_inference_token")

    return require_token


@post("/v1/completions", status_code=200)
async def create_completion(
    engine: NamedDependency[InferenceEngine],
    registry: NamedDependency[service.AdapterRegistry],
    settings: NamedDependency[Settings],
    data: JSONBody[NodeCompletionRequest],
) -> CreateCompletionResponse | Stream:
    """Complete token-id (or text) prompts on a base model or a loaded adapter."""
    return await service.create_completion(engine, registry, data, max_choices=settings.max_choices_per_request)


@get("/v1/models", sync_to_thread=True)
def list_models(registry: NamedDependency[service.AdapterRegistry]) -> ModelCardList:
    """The base models on this machine and the loaded adapters."""
    return ModelCardList(data=registry.cards())


@post("/v1/load_lora_adapter", status_code=200, sync_to_thread=True)
def load_lora_adapter(
    registry: NamedDependency[service.AdapterRegistry], data: JSONBody[LoadLoRAAdapterRequest]
) -> Response[str]:
    """Serve an adapter under a name (loaded into memory on its first request)."""
    return Response(registry.load(data), media_type=MediaType.TEXT)


@post("/v1/unload_lora_adapter", status_code=200, sync_to_thread=True)
def unload_lora_adapter(
    registry: NamedDependency[service.AdapterRegistry], data: JSONBody[UnloadLoRAAdapterRequest]
) -> Response[str]:
    """Stop serving an adapter (its model was deleted); rows already running on it finish."""
    return Response(registry.unload(data.lora_name), media_type=MediaType.TEXT)


@get("/metrics", sync_to_thread=False, media_type=MediaType.TEXT)
def metrics(gauges: NamedDependency[CollectorRegistry]) -> Response[bytes]:
    """Prometheus text exposition of the node's gauges."""
    return Response(generate_latest(gauges), media_type=CONTENT_TYPE_LATEST)


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
    registry.register(AdapterCacheCollector(engine.adapter_cache_stats))  # type: ignore[arg-type]
    return registry


def create_node(settings: Settings, blobs: BlobStore, engine: LocalEngine | None = None) -> Litestar:
    """The node's app over one `LocalEngine` (a new one over `blobs` unless given; closed at shutdown)."""
    node_engine = engine if engine is not None else LocalEngine(settings, blobs)
    guarded = Router(
        path="/",
        route_handlers=[create_completion, list_models, load_lora_adapter, unload_lora_adapter, metrics],
        guards=[token_guard(settings.inference_token)],
    )
    return Litestar(
        route_handlers=[guarded, healthz],
        dependencies=providers(
            engine=node_engine,
            registry=service.AdapterRegistry(settings, blobs, node_engine),
            settings=settings,
            gauges=node_metrics(node_engine),
        ),
        exception_handlers=exception_handlers(),
        request_class=APIRequest,
        on_shutdown=[node_engine.close],
        openapi_config=None,
        debug=False,
    )


def create_node_from_env() -> Litestar:
    """Entry point granian loads: settings from `TUNEWRIGHT_*` (`tunewright inference` exports its flags)."""
    settings = load_settings(os.environ)
    return create_node(settings, open_blob_store(settings))

"""Application wiring: settings and stores in, a Litestar app out. No rules live here."""

from __future__ import annotations

import importlib
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

from litestar import Controller, Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from tunewright.api.auth import current_principal
from tunewright.api.dependencies import providers
from tunewright.api.errors import exception_handlers
from tunewright.api.fine_tuning.events_stream import StreamSlots
from tunewright.api.fine_tuning.list_cache import JobPageCache, VersionReads
from tunewright.api.idempotency import IdempotencyMiddleware, IdempotentReplay, replay_response
from tunewright.api.metrics import Metrics, adapter_cache_stats, serve_with_context
from tunewright.api.nul_guard import NulCheckedRequest, refuse_nul_in_query
from tunewright.api.openapi import SchemaRouter
from tunewright.api.ratelimits.limiter import RateLimiter, build_counters
from tunewright.api.sweeper import sweeper_lifespan
from tunewright.api.ui.routes import DOCS_CSP, LocalSwaggerRenderPlugin, security_headers, ui_routes
from tunewright.api.webhooks.sender import webhook_sender_lifespan

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from litestar.types import ControllerRouterHandler, Receive, Scope, Send

    from tunewright.inference.engine import EventSink, GenerationRequest, InferenceEngine
    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

DEFAULT_FEATURES = (
    "files",
    "uploads",
    "fine_tuning",
    "models",
    "chat",
    "completions",
    "admin",
    "webhooks",
    "usage",
    "ratelimits",
    "audit_logs",
    "spend",
    "graders",
)
_FEATURE_MODULES = {
    "files": "tunewright.api.files.routes",
    "uploads": "tunewright.api.uploads.routes",
    "fine_tuning": "tunewright.api.fine_tuning.routes",
    "models": "tunewright.api.models.routes",
    "chat": "tunewright.api.chat.routes",
    "completions": "tunewright.api.completions.routes",
    "admin": "tunewright.api.admin.routes",
    "webhooks": "tunewright.api.webhooks.routes",
    "usage": "tunewright.api.usage.routes",
    "ratelimits": "tunewright.api.ratelimits.routes",
    "audit_logs": "tunewright.api.audit_logs.routes",
    "spend": "tunewright.api.spend.routes",
    "graders": "tunewright.api.graders.routes",
}


# Read handlers run inline on the event loop (`sync_to_thread=False`): a read is one indexed query that
# never waits on a lock (SQLite WAL, PostgreSQL MVCC) and costs less than a hop to a worker thread. The jobs list,
# the hottest read, hops on PostgreSQL only, where the read is a network round trip (`store_read`).
# Handlers that write, touch blobs or validate files run on worker threads.


class TunewrightApp(Litestar):
    """Litestar with the request id and metrics layer outermost, around Litestar's own error handling."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        """Serve one ASGI connection."""
        await serve_with_context(super().__call__, self.state.metrics, scope, receive, send)


BEARER = "bearer"
"""The OpenAPI security scheme of every `/v1` route: `Authorization: Bearer <key>`."""
_BEARER_SCHEME = SecurityScheme(
    type="http",
    scheme="bearer",
    description=(
        "A project key (`sk-proj-…`) for the project routes; an admin key (`sk-admin-…`) or the operator key "
        "(`TUNEWRIGHT_ADMIN_KEY`) for `/v1/organization/…`."
    ),
)


def _routes(features: Sequence[str]) -> list[ControllerRouterHandler]:
    """The operational routes, the features' `/v1` routes (which take a Bearer key), the dashboard's files."""
    from tunewright.api.system.routes import ROUTES as SYSTEM

    api: list[ControllerRouterHandler] = []
    for feature in features:
        module = importlib.import_module(_FEATURE_MODULES[feature])
        api.extend(_keyed(route) for route in module.ROUTES)
    return [*SYSTEM, *api, *ui_routes()]


def _keyed(route: ControllerRouterHandler) -> ControllerRouterHandler:
    """`route` behind a Bearer key (in the OpenAPI document) and the idempotency layer (api/idempotency.py).

    The layer passes every request through but those to routes that opt in. A controller gets both as a subclass's
    attributes, not through a Router around every route: Litestar deep-copies a Router it registers, which cost a
    third of building the app (a `serve` worker's start, every app a test builds).
    """
    security = [{BEARER: []}]
    if isinstance(route, type) and issubclass(route, Controller):
        layers = {
            "security": [*security, *_declared(route, "security")],
            "middleware": [IdempotencyMiddleware, *_declared(route, "middleware")],
        }
        return type(route.__name__, (route,), {**layers, "__module__": route.__module__})
    return Router(path="/", route_handlers=[route], security=security, middleware=[IdempotencyMiddleware])


def _declared(controller: type[Controller], name: str) -> Sequence[Any]:
    """The layer `name` a controller class declares (a slot it leaves unset reads as its descriptor)."""
    value = getattr(controller, name, None)
    return value if isinstance(value, (list, tuple)) else ()


def build_engine(settings: Settings, stores: Stores) -> InferenceEngine:
    """The inference engine `settings` name; cheap to build (models load on their first request)."""
    if settings.inference_engine == "local":
        from tunewright.inference.local import LocalEngine

        return LocalEngine(settings, stores.blobs)
    if settings.inference_engine == "remote":
        from tunewright.inference.remote import RemoteEngine

        return RemoteEngine(settings, stores.blobs)  # SettingsError naming TUNEWRIGHT_INFERENCE_URLS when it has none
    raise ValueError(f"TUNEWRIGHT_INFERENCE_ENGINE: unknown engine {settings.inference_engine!r}")


class LazyEngine:
    """The engine `settings` name, built on its first use: the API never loads what it does not serve.

    It is the app's engine (an `InferenceEngine` itself), so handlers are given one object whether or not it was
    built; `forget` on an engine never built has nothing to drop, and `close` closes only what it built.
    """

    def __init__(self, factory: Callable[[], InferenceEngine]) -> None:
        self._factory = factory
        self._engine: InferenceEngine | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> InferenceEngine | None:
        """The engine if it was built, else None (never builds it)."""
        return self._engine

    def built(self) -> InferenceEngine:
        """The engine, built now if this is its first use."""
        engine = self._engine
        if engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._factory()
                engine = self._engine
        return engine

    def tokenizer(self, base_model: str) -> Any:
        """See `InferenceEngine.tokenizer`."""
        return self.built().tokenizer(base_model)

    def context_length(self, base_model: str) -> int:
        """See `InferenceEngine.context_length`."""
        return self.built().context_length(base_model)

    def submit(self, request: GenerationRequest, sink: EventSink, *, cancelled: threading.Event) -> None:
        """See `InferenceEngine.submit`."""
        self.built().submit(request, sink, cancelled=cancelled)

    def forget(self, adapter_name: str) -> None:
        """See `InferenceEngine.forget`; nothing to drop before the engine is built."""
        if self._engine is not None:
            self._engine.forget(adapter_name)

    def close(self) -> None:
        """Close the engine if it was built."""
        if self._engine is not None:
            self._engine.close()


def create_app(
    settings: Settings,
    stores: Stores,
    engine: InferenceEngine | None = None,
    features: Sequence[str] = DEFAULT_FEATURES,
    *,
    sweep: bool = True,
    send_webhooks: bool = True,
    trainer_status: Path | None = None,
    metrics_dir: str | None = None,
) -> Litestar:
    """Build the API for `settings` over `stores`; `features` picks the route groups to mount.

    `sweep` runs the housekeeping loop (expired uploads and files) while the app serves; `send_webhooks` runs the
    webhook outbox's sender (api/webhooks/sender.py) when the `webhooks` feature is mounted. Without an `engine`,
    the one `settings` names is built on the first completion request and closed when the app shuts down (one
    handed in belongs to the caller).
    `trainer_status` is the status file of the `serve` that supervises the trainers (/healthz, /metrics).
    `metrics_dir` is the directory API processes behind one port share their counters in (api/metrics.py).
    """
    own_engine = LazyEngine(partial(build_engine, settings, stores)) if engine is None else None
    app_engine = engine or own_engine
    metrics = Metrics(
        stores,
        trainer_status,
        max_projects=settings.metrics_max_projects,
        adapter_stats=partial(adapter_cache_stats, app_engine),
        multiprocess_dir=metrics_dir,
    )
    # For the guards, middleware and lifespan, which dependency injection does not reach.
    limiter = RateLimiter(settings, stores, build_counters(settings, metrics), metrics)
    state = {
        "settings": settings,
        "stores": stores,
        "metrics": metrics,
        "engine": app_engine,
        "limiter": limiter,
        "job_pages": JobPageCache(settings.job_list_cache_bytes),
        "job_list_versions": VersionReads(stores),
    }
    return TunewrightApp(
        route_handlers=_routes(features),
        state=State(state),
        dependencies={
            "principal": Provide(current_principal, sync_to_thread=False),
            **providers(
                stores=stores,
                settings=settings,
                engine=app_engine,
                metrics=metrics,
                limiter=limiter,
                trainer_status=trainer_status,
                event_streams=StreamSlots(settings.max_event_streams_per_key),
            ),
        },
        exception_handlers={**exception_handlers(), IdempotentReplay: replay_response},
        request_class=NulCheckedRequest,
        before_request=refuse_nul_in_query,
        lifespan=[
            *([sweeper_lifespan] if sweep else []),
            *([webhook_sender_lifespan] if send_webhooks and "webhooks" in features else []),
        ],
        on_shutdown=[limiter.close, *([own_engine.close] if own_engine is not None else [])],
        openapi_config=OpenAPIConfig(
            title="Tunewright",
            version="0.1.0",
            description=(
                "OpenAI-compatible fine-tuning, files, uploads, models, chat and completions API, with the "
                "organization admin, usage and webhook endpoints."
            ),
            openapi_router=SchemaRouter(
                path="/",
                route_handlers=[],
                include_in_schema=False,
                response_headers=security_headers(DOCS_CSP),
            ),
            render_plugins=[JsonRenderPlugin(path="/openapi.json"), LocalSwaggerRenderPlugin()],
            components=Components(security_schemes={BEARER: _BEARER_SCHEME}),
            use_handler_docstrings=True,
        ),
        debug=False,
    )

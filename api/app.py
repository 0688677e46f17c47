"""Application wiring: settings and stores in, a Litestar app out. No rules live here."""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from tunewright.api.auth import current_principal
from tunewright.api.errors import exception_handlers
from tunewright.api.metrics import Metrics, serve_with_context
from tunewright.api.sweeper import sweeper_lifespan

if TYPE_CHECKING:
    from collections.abc import Sequence

    from litestar.types import ControllerRouterHandler, Receive, Scope, Send

    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

DEFAULT_FEATURES = ("files", "uploads", "fine_tuning", "models", "admin")
_FEATURE_MODULES = {
    "files": "tunewright.api.files.routes",
    "uploads": "tunewright.api.uploads.routes",
    "fine_tuning": "tunewright.api.fine_tuning.routes",
    "models": "tunewright.api.models.routes",
    "admin": "tunewright.api.admin.routes",
}


# Read handlers run inline on the event loop (`sync_to_thread=False`): a read is one indexed query that
# never waits on a lock (SQLite WAL, PostgreSQL MVCC) and costs less than a hop to a worker thread.
# Handlers that write, touch blobs or validate files run on worker threads.


class TunewrightApp(Litestar):
    """Litestar with the request id and metrics layer outermost, around Litestar's own error handling."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        """Serve one ASGI connection."""
        await serve_with_context(super().__call__, self.state.metrics, scope, receive, send)


def _routes(features: Sequence[str]) -> list[ControllerRouterHandler]:
    from tunewright.api.system.routes import ROUTES as SYSTEM

    routes: list[ControllerRouterHandler] = list(SYSTEM)
    for feature in features:
        module = importlib.import_module(_FEATURE_MODULES[feature])
        routes.extend(module.ROUTES)
    return routes


def create_app(
    settings: Settings,
    stores: Stores,
    engine: Any = None,
    features: Sequence[str] = DEFAULT_FEATURES,
    *,
    sweep: bool = True,
) -> Litestar:
    """Build the API for `settings` over `stores`; `features` picks the route groups to mount.

    `sweep` runs the housekeeping loop (expired uploads and files) while the app serves.
    """
    return TunewrightApp(
        route_handlers=_routes(features),
        state=State(
            {
                "settings": settings,
                "stores": stores,
                "engine": engine,
                "metrics": Metrics(stores),
                "started_at": int(time.time()),
            }
        ),
        dependencies={"principal": Provide(current_principal, sync_to_thread=False)},
        exception_handlers=exception_handlers(),
        lifespan=[sweeper_lifespan] if sweep else [],
        openapi_config=OpenAPIConfig(
            title="Tunewright",
            version="0.1.0",
            description="OpenAI-compatible files, uploads, fine-tuning and models API.",
            path="/",
            render_plugins=[JsonRenderPlugin(path="/openapi.json")],
            use_handler_docstrings=True,
        ),
        debug=False,
    )

"""The baselines `bench/api.py` serves next to Tunewright, on the same granian settings.

- `litestar_hello`: Tunewright's own app class (`TunewrightApp`: request id + Prometheus metrics outermost,
  with a real `Metrics` registry so each request is recorded) with its exception handlers, answering a small
  JSON object from one route. What it costs is the floor of any Litestar route of ours.
- `bare_hello`: an ASGI callable answering the same JSON: the floor of granian itself.

granian loads them by name from this directory (`--working-dir bench`): `apps:litestar_hello` (a factory,
reading the same `TUNEWRIGHT_*` environment as the real app) and `apps:bare_hello`.
"""

from __future__ import annotations

import os
from typing import Any

from litestar import Litestar, get
from litestar.datastructures import State

from tunewright.api.app import TunewrightApp
from tunewright.api.errors import exception_handlers
from tunewright.api.metrics import Metrics
from tunewright.storage.registry import open_stores
from tunewright.storage.settings import load_settings

HELLO = {"object": "hello", "message": "Hello, world!"}
HELLO_BYTES = b'{"object":"hello","message":"Hello, world!"}'


@get("/hello", sync_to_thread=False)
def hello() -> dict[str, str]:
    """A small JSON object."""
    return HELLO


def litestar_hello() -> Litestar:
    """The Litestar hello-world with Tunewright's request-id/metrics layer and exception handlers."""
    stores = open_stores(load_settings(os.environ))  # only for Metrics' scrape-time collector
    app = TunewrightApp(
        route_handlers=[hello],
        state=State({"metrics": Metrics(stores)}),
        exception_handlers=exception_handlers(),
        openapi_config=None,
        debug=False,
    )
    app.on_shutdown.append(stores.close)
    return app


async def bare_hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: the same JSON on every path; lifespan acknowledged."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(HELLO_BYTES))],
        }
    )
    await send({"type": "http.response.body", "body": HELLO_BYTES})

"""An inference node: one ``LocalEngine`` behind a small HTTP protocol that ``RemoteEngine`` speaks.

``tunewright inference`` serves this app with granian in one process (one worker: one copy of each base model).
The node opens the same blob store as the API and fetches tenants' adapters from it itself. It knows nothing of
tenants: the API checks who may call which model and renders the prompt; the node runs what the API asks.

Protocol (every ``/internal/*`` request carries ``Authorization: Bearer <TUNEWRIGHT_INFERENCE_TOKEN>``, compared
in constant time; a missing or wrong token is 401):

- ``POST /internal/generate``: body a JSON ``GenerationRequest`` (``inference.engine``, encoded by msgspec).
  Answer ``200`` ``application/x-ndjson``: one JSON ``GenerationEvent`` per line, as the engine yields them.
  When ``generate`` fails before any event (unknown base model, adapter that cannot load, prompt too long) the
  answer has the ``EngineError``'s status and one line ``{"error": {"message", "code", "status", "param"}}``;
  a failure after streaming began ends the stream with such a line. A client that disconnects sets the
  request's ``cancelled`` event, so the engine frees its rows at the next token.
- ``GET /internal/models/{base}``: ``{"context_length": n}`` (or the error object, 404 for an unknown base).
- ``POST /internal/forget``: body ``{"name": "<adapter name>"}``; drops the adapter from memory and disk.
- ``GET /internal/stats``: ``{"active_rows": n}``, the rows running or waiting in the node's batches.
- ``GET /healthz``: ``{"status": "ok"}``, no token (for load balancers and start-up polling).

Without a token the node answers every request, so ``tunewright inference`` refuses to start without one
unless it listens on a loopback address (only processes on the same host can reach it then).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.response import Stream

from tunewright.inference.engine import EngineError, GenerationRequest
from tunewright.inference.local import LocalEngine
from tunewright.storage.base import open_stores
from tunewright.storage.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from tunewright.inference.engine import GenerationEvent
    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"


class ForgetRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /internal/forget``."""

    name: str


def error_object(exc: EngineError) -> dict[str, Any]:
    """The protocol's error object for an engine failure."""
    return {"error": {"message": exc.message, "code": exc.code, "status": exc.status, "param": exc.param}}


def error_line(exc: EngineError) -> bytes:
    """The error object as one NDJSON line."""
    return msgspec.json.encode(error_object(exc)) + b"\n"


def error_response(exc: EngineError) -> Response[bytes]:
    """A non-streamed answer carrying the error object with the error's status."""
    return Response(error_line(exc), status_code=exc.status, media_type=NDJSON)


def require_token(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """Guard of ``/internal/*``: the bearer token must equal the node's (none configured: open).

    Raises:
        NotAuthorizedException: the token is missing or wrong.
    """
    expected: str | None = connection.app.state.settings.inference_token
    if expected is None:
        return
    scheme, _, given = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise NotAuthorizedException("missing or invalid inference token")


def _http_error(_request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Routing, guard and body errors in the protocol's error shape."""
    code = "invalid_inference_token" if exc.status_code == 401 else "invalid_request"
    return error_response(EngineError(str(exc.detail), code=code, status=exc.status_code))


def _server_error(_request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Anything unexpected: logged here, a 500 error object on the wire."""
    logger.error("inference node request failed", exc_info=exc)
    return error_response(EngineError("the inference node had an internal error", code="server_error", status=500))


def _next(events: Iterator[GenerationEvent]) -> GenerationEvent | None:
    return next(events, None)


async def _lines(events: Iterator[GenerationEvent], cancelled: threading.Event) -> AsyncIterator[bytes]:
    """Yield one JSON line per event; a failure midway is a final error line.

    Litestar cancels this generator when the client disconnects; ``finally`` then stops the engine. The thread
    waiting for the next event is abandoned on cancellation (it ends once the engine drops the request).
    """
    try:
        while (event := await anyio.to_thread.run_sync(_next, events, abandon_on_cancel=True)) is not None:
            yield msgspec.json.encode(event) + b"\n"
    except EngineError as exc:
        yield error_line(exc)
    except Exception:
        logger.exception("generation failed on the inference node")
        yield error_line(EngineError("the inference node failed while generating", code="server_error", status=500))
    finally:
        cancelled.set()
        close = getattr(events, "close", None)
        if close is not None:
            close()


@post("/internal/generate", status_code=200, guards=[require_token])
async def generate(request: Request[Any, Any, Any], state: State) -> Response[bytes] | Stream:
    """Run one ``GenerationRequest``; stream its events as NDJSON."""
    try:
        body = msgspec.json.decode(await request.body(), type=GenerationRequest)
    except msgspec.DecodeError as exc:
        return error_response(EngineError(f"bad generation request: {exc}", code="invalid_request"))
    cancelled = threading.Event()
    engine: LocalEngine = state.engine
    try:
        events = await anyio.to_thread.run_sync(partial(engine.generate, body, cancelled=cancelled))
    except EngineError as exc:
        return error_response(exc)
    return Stream(_lines(iter(events), cancelled), media_type=NDJSON)


@get("/internal/models/{base:str}", guards=[require_token])
async def model_info(base: str, state: State) -> Response[bytes]:
    """The base model's context length."""
    engine: LocalEngine = state.engine
    try:
        length = await anyio.to_thread.run_sync(engine.context_length, base)
    except EngineError as exc:
        return error_response(exc)
    return Response(msgspec.json.encode({"context_length": length}), media_type="application/json")


@post("/internal/forget", status_code=200, guards=[require_token], sync_to_thread=True)
def forget(data: ForgetRequest, state: State) -> dict[str, str]:
    """Drop an adapter from the node's caches (its model was deleted)."""
    state.engine.forget(data.name)
    return {"forgotten": data.name}


@get("/internal/stats", guards=[require_token], sync_to_thread=False)
def stats(state: State) -> dict[str, int]:
    """The rows running or waiting in the node's batches."""
    return {"active_rows": state.engine.active_rows()}


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The node is up (models load on their first request)."""
    return {"status": "ok"}


def create_node(settings: Settings, stores: Stores, engine: LocalEngine | None = None) -> Litestar:
    """Build the node's app over one ``LocalEngine`` (a new one over ``stores`` unless given; closed at shutdown)."""
    node_engine = engine if engine is not None else LocalEngine(settings, stores)
    return Litestar(
        route_handlers=[generate, model_info, forget, stats, healthz],
        state=State({"settings": settings, "stores": stores, "engine": node_engine}),
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        on_shutdown=[node_engine.close],
        openapi_config=None,
        debug=False,
    )


def create_node_from_env() -> Litestar:
    """Entry point granian loads: settings from ``TUNEWRIGHT_*`` (``tunewright inference`` exports its flags)."""
    settings = load_settings(os.environ)
    stores = open_stores(settings)
    app = create_node(settings, stores)
    app.on_shutdown.append(stores.close)
    return app

"""Running a generation for /v1/chat/completions and /v1/completions: the model, the engine, the answer.

The handlers resolve the model and render the prompt on a worker thread, then `EventRelay` submits the
engine requests (one per prompt) from one worker thread and receives each `GenerationEvent` on the event loop:
the engine's threads schedule them there without waiting, so no thread serves one request. What a slow
client has not read yet stays queued (at most the request's own output). Closing the relay (the response
finished, failed, or its client went away) sets the engine's `cancelled` flag, so the decode loop frees the
request's rows at its next token; `api/metering.py` counts what it generated.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread
import msgspec

from tunewright.api.errors import (
    APIError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)
from tunewright.api.fine_tuning.service import model_not_found
from tunewright.api.sse import DONE_FRAME, HEADERS, MEDIA_TYPE, EventStream, SseOperation, error_frame
from tunewright.inference.engine import AdapterRef, EngineError, GenerationEvent, ModelTarget
from tunewright.storage.errors import NotFound

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from tunewright.api.metering import CompletionUsage, Meter
    from tunewright.inference.engine import EventItem, GenerationRequest, InferenceEngine
    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)


class StreamingOperation(SseOperation):
    """A completion route: JSON, or with `stream: true` server-sent events."""

    frames = "`data: <chunk JSON>` frames, then `data: [DONE]`."


# ----------------------------------------------------------------------------------- models, engine


def resolve_target(stores: Stores, settings: Settings, model: str, *, project_id: str) -> ModelTarget:
    """A configured base model, or an `ft:` model (final or checkpoint) the project owns or was granted.

    Raises:
        NotFoundError: `model_not_found` for anything else (another tenant's, deleted or unknown), as OpenAI.
    """
    if model in settings.base_models:
        return ModelTarget(base_model=model)
    try:
        record = stores.metadata.get_model(model, project_id=project_id)
    except NotFound:
        raise model_not_found(model, param=None, status=404) from None
    if record.base_model not in settings.base_models:
        raise model_not_found(model, param=None, status=404)
    return ModelTarget(base_model=record.base_model, adapter=AdapterRef(name=record.id, blob_prefix=record.adapter_key))


_STATUS_ERRORS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    404: NotFoundError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def api_error(exc: EngineError) -> APIError:
    """The API's answer to an engine failure: its status, code and param."""
    return _STATUS_ERRORS.get(exc.status, ServerError)(exc.message, param=exc.param, code=exc.code)


def call_engine(function: Any, *args: Any) -> Any:
    """Call an engine method, turning an `EngineError` into the API's error."""
    try:
        return function(*args)
    except EngineError as exc:
        raise api_error(exc) from exc


# ------------------------------------------------------------------------------------------- relay


class EventRelay:
    """Submit a request's generations to the engine and hand their events to the event loop.

    The engine's own threads (the local scheduler, the remote engine's connections) call the sinks, which
    schedule each item onto the event loop without waiting: a request holds no thread of its own, whatever its
    number of prompts. Events come out with their choice index shifted by the request's offset (request k of a
    legacy completion with several prompts owns choices `k*n … k*n+n-1`). A failure of any request ends the
    relay with it.
    """

    def __init__(self, engine: InferenceEngine, requests: Sequence[GenerationRequest]) -> None:
        """Prepare the queue; `start()` submits the requests (from the event loop)."""
        self.engine = engine
        self.requests = list(requests)
        self.cancelled = threading.Event()
        self._items: collections.deque[GenerationEvent | BaseException] = collections.deque()
        self._arrived = asyncio.Event()
        self._running = len(self.requests)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def start(self) -> None:
        """Submit every request, from one worker thread (the engine may load a model or an adapter first).

        Raises:
            APIError: a request the engine refuses (the ones submitted before it are cancelled).
        """
        self._loop = asyncio.get_running_loop()
        await anyio.to_thread.run_sync(self._submit)

    def _submit(self) -> None:
        offset = 0
        try:
            for request in self.requests:
                self.engine.submit(request, RelaySink(self, offset), cancelled=self.cancelled)
                offset += request.n
        except EngineError as exc:
            self.cancelled.set()
            raise api_error(exc) from exc
        except BaseException:
            self.cancelled.set()
            raise

    def deliver(self, item: EventItem) -> None:
        """Schedule an item onto the event loop (from the engine's threads; never waits)."""
        try:
            self._loop.call_soon_threadsafe(self._arrive, item)  # type: ignore[union-attr]
        except RuntimeError:  # the event loop is closed: nobody reads any more
            self.cancelled.set()

    def _arrive(self, item: EventItem) -> None:
        if item is None:
            self._running -= 1
        elif not self._closed:
            self._items.append(item)
        self._arrived.set()

    async def next(self) -> GenerationEvent | None:
        """The next event of any choice, or None once every request has ended.

        Raises:
            APIError: an engine failure (its `EngineError` mapped), or a server error for anything else.
        """
        while not self._items:
            if self._running <= 0 or self._closed:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        item = self._items.popleft()
        if isinstance(item, EngineError):
            raise api_error(item) from item
        if isinstance(item, BaseException):
            raise item
        return item

    async def peek(self) -> None:
        """Wait for the first event, so a failure before any output is still an ordinary error response."""
        event = await self.next()
        if event is not None:
            self._items.appendleft(event)

    def close(self) -> None:
        """Stop generation (if still running) and drop what is queued."""
        self.cancelled.set()
        self._closed = True
        self._items.clear()


class RelaySink:
    """One request's sink: its events, their choice indexes shifted by `offset`, go to the relay."""

    def __init__(self, relay: EventRelay, offset: int) -> None:
        """Deliver to `relay`, shifting indexes by `offset`."""
        self.relay = relay
        self.offset = offset

    def put(self, item: EventItem) -> None:
        """Hand an item to the relay (called by the engine's threads)."""
        if self.offset and isinstance(item, GenerationEvent):
            item = msgspec.structs.replace(item, index=item.index + self.offset)
        self.relay.deliver(item)


# ------------------------------------------------------------------------------------------ answers


async def collect(relay: EventRelay, meter: Meter) -> list[GenerationEvent]:
    """Run the relay to its end and return every event (a non-streamed answer); meter it either way.

    A request the engine refuses at once is metered too: its rate-limit charge is settled (no usage row, since
    nothing was generated).
    """
    events: list[GenerationEvent] = []
    try:
        await relay.start()
        while (event := await relay.next()) is not None:
            meter.count(event)
            events.append(event)
    finally:
        relay.close()
        await meter.record()
    return events


async def open_stream(relay: EventRelay, meter: Meter, frames: Frames) -> EventStream:
    """Start the relay and wait for its first event, then answer with the SSE stream of `frames`.

    A failure before any output (an adapter that cannot load) is still an ordinary error response, after the
    request's rate-limit charge is settled.
    """
    try:
        await relay.start()
        await relay.peek()
    except BaseException:
        relay.close()
        await meter.record()
        raise
    return EventStream(_stream(relay, meter, frames), media_type=MEDIA_TYPE, headers=HEADERS)


class Frames(Protocol):
    """How one endpoint writes its chunks: an opening, one or more per event, the usage chunk."""

    def opening(self) -> list[bytes]:
        """Frames sent before any event (the role chunks of a chat)."""
        ...

    def on_event(self, event: GenerationEvent) -> list[bytes]:
        """Frames for one event."""
        ...

    def closing(self, usage: CompletionUsage) -> list[bytes]:
        """Frames sent after the last event, before `[DONE]` (the usage chunk when asked)."""
        ...


def sse(chunk: msgspec.Struct) -> bytes:
    """One `data: <JSON>` frame."""
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


async def _stream(relay: EventRelay, meter: Meter, frames: Frames) -> AsyncIterator[bytes]:
    """Yield the frames, then `[DONE]`; a failure after the first byte is one error frame, then close.

    A client that goes away cancels this generator: `finally` stops the engine and meters what was generated.
    """
    try:
        for frame in frames.opening():
            yield frame
        while (event := await relay.next()) is not None:
            meter.count(event)
            for frame in frames.on_event(event):
                yield frame
        for frame in frames.closing(meter.usage()):
            yield frame
        yield DONE_FRAME
    except APIError as exc:
        yield error_frame(exc)
    except Exception as exc:  # logged; the status line is sent, so the client learns of it from one frame
        logger.error("completion stream of %s failed", meter.model, exc_info=exc)
        yield error_frame(ServerError("The server had an error while generating the completion."))
    finally:
        relay.close()
        await meter.record()

"""What /v1/chat/completions and /v1/completions share: limits, model resolution, the engine relay, metering.

The handlers resolve the model and render the prompt on a worker thread, then `EventRelay` runs
`engine.generate` on threads of its own and hands each `GenerationEvent` to the event loop through one bounded
channel (back-pressure: a slow client slows decoding instead of filling memory). Closing the relay (the
response finished, failed, or its client went away) sets the engine's `cancelled` flag, so the decode loop
frees the request's rows at its next token. `Meter` writes one usage row per request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import msgspec
from msgspec import UNSET, Meta, UnsetType

from tunewright.api.errors import (
    APIError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    echo,
)
from tunewright.api.fine_tuning.service import model_not_found
from tunewright.api.schemas import Request, Response
from tunewright.api.sse import DONE_FRAME, HEADERS, MEDIA_TYPE, EventStream, SseOperation, error_frame
from tunewright.inference.engine import AdapterRef, EngineError, ModelTarget
from tunewright.storage.errors import NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.records import UsageRecord

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from litestar.datastructures import State

    from tunewright.api.auth import Principal
    from tunewright.inference.engine import GenerationEvent, GenerationRequest, InferenceEngine
    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)

Temperature = Annotated[float, Meta(ge=0, le=2)]
TopP = Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
ChoiceCount = Annotated[int, Meta(ge=1, le=128)]
MaxTokens = Annotated[int, Meta(ge=1)]
Stop = str | Annotated[list[str], Meta(min_length=1, max_length=4)]
TopLogprobs = Annotated[int, Meta(ge=0, le=20)]
Seed = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Metadata = dict[str, str]
ServiceTier = Literal["auto", "default", "flex", "scale", "priority", "fast"]

CHANNEL_DEPTH = 64


class ChatCompletionStreamOptions(Request):
    """`ChatCompletionStreamOptions`: only with `stream: true`; obfuscation is never sent, so it is a no-op."""

    include_usage: bool | UnsetType = UNSET
    include_obfuscation: bool | UnsetType = UNSET


class CompletionUsage(Response):
    """`CompletionUsage`: real token counts of the request (the prompt once, every choice's completion)."""

    completion_tokens: int
    prompt_tokens: int
    total_tokens: int


class StreamingOperation(SseOperation):
    """A completion route: JSON, or with `stream: true` server-sent events."""

    frames = "`data: <chunk JSON>` frames, then `data: [DONE]`."


# ------------------------------------------------------------------------------------------- rules


def unsupported(param: str, what: str = "is not supported by this server") -> InvalidRequestError:
    """400 for a field we cannot honour and must not ignore (it would change the result)."""
    return InvalidRequestError(f"Unsupported parameter: '{param}' {what}.", param=param, code="unsupported_parameter")


def invalid(param: str, message: str) -> InvalidRequestError:
    """400 `invalid_value` naming `param`."""
    return InvalidRequestError(f"Invalid value for '{param}': {message}", param=param, code="invalid_value")


def logit_bias_ids(bias: dict[str, int] | None | UnsetType, vocab_size: int) -> dict[int, float]:
    """Turn `{"<token id>": bias}` into `{id: bias}`: keys token ids of the vocabulary, biases -100 to 100.

    Checked here rather than on the field, so that the error names `logit_bias` (not `logit_bias[...]`).

    Raises:
        InvalidRequestError: a key is not a token id of the model, or a bias is out of range.
    """
    if not bias:
        return {}
    out: dict[int, float] = {}
    for key, value in bias.items():
        if not key.isdigit() or int(key) >= vocab_size:
            raise invalid("logit_bias", f"{echo(key)} is not a token id of this model (0 to {vocab_size - 1}).")
        if not -100 <= value <= 100:
            raise invalid("logit_bias", f"the bias of token {key} must be between -100 and 100 (got {value}).")
        out[int(key)] = float(value)
    return out


def stop_tuple(stop: str | list[str] | None | UnsetType) -> tuple[str, ...]:
    """The stop sequences as the engine takes them (empty strings dropped: they would stop at once)."""
    if stop is None or stop is UNSET:
        return ()
    return tuple(s for s in ([stop] if isinstance(stop, str) else stop) if s)


def completion_budget(prompt_tokens: int, requested: int | None, *, default: int, context: int, param: str) -> int:
    """Return `max_new_tokens`: the request's, or `default` cut to what the context leaves.

    Raises:
        InvalidRequestError: `context_length_exceeded` when the prompt and the completion cannot fit.
    """
    left = context - prompt_tokens
    budget = requested if requested is not None else min(default, left)
    if budget < 1 or prompt_tokens + budget > context:
        shown = requested if requested is not None else 1
        raise InvalidRequestError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + shown} tokens ({prompt_tokens} in the {param}, {shown} in the completion). "
            f"Please reduce the length of the {param} or completion.",
            param=param,
            code="context_length_exceeded",
        )
    return budget


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


def engine_of(state: State) -> InferenceEngine:
    """The app's engine (a `LazyEngine` builds the configured one on its first use)."""
    return state.engine


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
    """Run `engine.generate` for each request on its own thread; hand the events over one bounded channel.

    Events come out with their choice index shifted by the request's offset (request k of a legacy completion
    with several prompts owns choices `k*n … k*n+n-1`). A failure of any request ends the relay with it.
    """

    def __init__(self, engine: InferenceEngine, requests: Sequence[GenerationRequest]) -> None:
        """Prepare the channel; `start()` launches the threads (from the event loop)."""
        self.engine = engine
        self.requests = list(requests)
        self.cancelled = threading.Event()
        self._send, self._recv = anyio.create_memory_object_stream[Any](CHANNEL_DEPTH)
        self._pending: tuple[int, GenerationEvent] | None = None

    def start(self) -> None:
        """Start one thread per request."""
        token = anyio.lowlevel.current_token()
        offset = 0
        for request in self.requests:
            thread = threading.Thread(
                target=self._drive, args=(request, offset, self._send.clone(), token), daemon=True
            )
            thread.start()
            offset += request.n
        self._send.close()

    def _drive(self, request: GenerationRequest, offset: int, send: Any, token: Any) -> None:
        events = None
        try:
            events = self.engine.generate(request, cancelled=self.cancelled)
            for event in events:
                if offset:
                    event = msgspec.structs.replace(event, index=event.index + offset)
                anyio.from_thread.run(send.send, event, token=token)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.RunFinishedError):
            self.cancelled.set()  # the consumer is gone
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it in the request
            with contextlib.suppress(Exception):
                anyio.from_thread.run(send.send, exc, token=token)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            try:
                anyio.from_thread.run_sync(send.close, token=token)
            except (anyio.RunFinishedError, RuntimeError):
                send.close()  # the event loop is gone: nothing else touches the stream any more

    async def next(self) -> GenerationEvent | None:
        """The next event of any choice, or None once every request has finished.

        Raises:
            APIError: an engine failure (its `EngineError` mapped), or a server error for anything else.
        """
        if self._pending is not None:
            event, self._pending = self._pending, None
            return event  # type: ignore[return-value]
        try:
            item = await self._recv.receive()
        except anyio.EndOfStream:
            return None
        if isinstance(item, EngineError):
            raise api_error(item) from item
        if isinstance(item, BaseException):
            raise item
        return item

    async def peek(self) -> None:
        """Wait for the first event, so a failure before any output is still an ordinary error response."""
        event = await self.next()
        if event is not None:
            self._pending = event  # type: ignore[assignment]
        else:
            await self._recv.aclose()

    def close(self) -> None:
        """Stop generation (if still running) and drop what is queued."""
        self.cancelled.set()
        self._recv.close()


# ------------------------------------------------------------------------------------------- usage


@dataclass
class Meter:
    """Counts one request's tokens and writes its usage row (without `stores`, only counts: an inference node)."""

    stores: Stores | None
    principal: Principal | None
    model: str
    endpoint: Literal["chat.completions", "completions"]
    streamed: bool
    started: float = field(default_factory=time.monotonic)
    base_model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ran: bool = False

    def count(self, event: GenerationEvent) -> None:
        """Add an event's tokens."""
        self.ran = True
        self.completion_tokens += len(event.token_ids)

    def usage(self) -> CompletionUsage:
        """The wire `usage` object."""
        return CompletionUsage(
            completion_tokens=self.completion_tokens,
            prompt_tokens=self.prompt_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )

    async def record(self) -> None:
        """Write the usage row (shielded: it runs when a dropped stream is being cancelled too)."""
        if not self.ran or self.stores is None or self.principal is None:
            return
        record = UsageRecord(
            id=new_id("usage"),
            project_id=self.principal.project_id or "",
            api_key_id=self.principal.key_id,
            model=self.model,
            base_model=self.base_model,
            endpoint=self.endpoint,
            streamed=self.streamed,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=round((time.monotonic() - self.started) * 1000),
            created_at=int(time.time()),
        )
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self.stores.metadata.insert_usage, record)
            except Exception:  # the answer is already out; a lost row is logged, not raised
                logger.exception("could not record usage of %s", self.model)


# ------------------------------------------------------------------------------------------ answers


async def collect(relay: EventRelay, meter: Meter) -> list[GenerationEvent]:
    """Run the relay to its end and return every event (a non-streamed answer); meter it either way."""
    events: list[GenerationEvent] = []
    relay.start()
    try:
        while (event := await relay.next()) is not None:
            meter.count(event)
            events.append(event)
    finally:
        relay.close()
        await meter.record()
    return events


async def open_stream(relay: EventRelay, meter: Meter, frames: Frames) -> EventStream:
    """Start the relay and wait for its first event, then answer with the SSE stream of `frames`.

    A failure before any output (an adapter that cannot load) is still an ordinary error response.
    """
    relay.start()
    try:
        await relay.peek()
    except BaseException:
        relay.close()
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

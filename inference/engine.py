"""The ``InferenceEngine`` protocol: what the API asks of whatever generates text (docs/architecture.md "Inference").

The API authenticates, resolves the model name to a ``ModelTarget`` (a base model, or a base model plus one
tenant's adapter), renders the prompt with the base model's chat template into token ids, and submits one
``GenerationRequest`` per prompt. The engine hands its ``GenerationEvent``s to the request's ``EventSink`` from
threads of its own (one event per new piece of text of one choice, then that choice's finish, then the end), so
no thread of the caller waits on a request however many prompts it has. Two implementations:
``inference/local.py`` (transformers in this process, or in a ``tunewright inference`` node, with per-row LoRA)
and ``inference/remote.py`` (OpenAI-protocol servers with dynamic LoRA loading: ``tunewright inference`` nodes
or vLLM).
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    import threading

FinishReason = Literal["stop", "length"]


class EngineError(Exception):
    """A request the engine cannot serve; ``code`` and ``status`` become the API's error.

    Attributes:
        code: OpenAI-style error code (``model_not_found``, ``context_length_exceeded``, ``adapter_unavailable``).
        status: The HTTP status the API answers with.
        param: The request field at fault, if any.
    """

    def __init__(self, message: str, *, code: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.param = param


class AdapterRef(msgspec.Struct, frozen=True, kw_only=True):
    """A fine-tuned (or checkpoint) model's LoRA adapter: its name and where its PEFT files live.

    Exactly one of ``blob_prefix`` and ``path`` is set.

    Attributes:
        name: The model id (``ft:…``), unique across tenants; the cache key.
        blob_prefix: The blob store prefix holding ``adapter_config.json`` + ``adapter_model.safetensors``.
        path: A local directory holding them instead (an adapter an inference node was asked to load from disk).
    """

    name: str
    blob_prefix: str | None = None
    path: str | None = None


class ModelTarget(msgspec.Struct, frozen=True, kw_only=True):
    """What a request runs on: a configured base model, with an adapter or without (the base model itself)."""

    base_model: str
    adapter: AdapterRef | None = None


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """One choice's decoding settings. ``temperature == 0`` is greedy; ``seed`` makes sampling reproducible.

    Temperatures under ``sampling.GREEDY_BELOW`` (1e-5) are greedy too. ``stop`` strings end a choice (not
    included in its text); ``logit_bias`` maps token ids to additive biases; ``top_logprobs`` > 0 implies
    ``logprobs``.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = msgspec.field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0


class GenerationRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``n`` choices of continuations of one prompt (an API request with several prompts submits one per prompt).

    Choice ``i`` samples with seed ``params.seed + i`` when a seed is given, so ``n`` choices differ but the
    same request gives the same texts. ``project_id`` is whose request it is: engines take the waiting work of
    projects in turn, so one project's large request does not hold back the others.
    """

    target: ModelTarget
    prompt_ids: list[int]
    params: SamplingParams
    n: int = 1
    project_id: str = ""


class TopLogprob(msgspec.Struct, frozen=True, kw_only=True):
    """One alternative token at a position."""

    token_id: int
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(msgspec.Struct, frozen=True, kw_only=True):
    """The chosen token at a position, its log-probability and the most likely alternatives.

    Engine-side (the API writes OpenAI's shapes from it): ``token_id`` is what an inference node reports back
    when asked for token ids instead of texts.
    """

    token_id: int
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob] = msgspec.field(default_factory=list)


class GenerationEvent(msgspec.Struct, frozen=True, kw_only=True):
    """New output of one choice: ``text`` decoded so far minus what earlier events gave, and/or its finish.

    Attributes:
        index: The choice (0 … n-1).
        text: The new text (may be empty on the finishing event).
        token_ids: The tokens this event covers (their count is what usage meters).
        logprobs: One entry per token in ``token_ids`` when logprobs were asked for.
        finish_reason: Set on the choice's last event only.
    """

    index: int
    text: str = ""
    token_ids: list[int] = msgspec.field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None


EventItem = GenerationEvent | BaseException | None
"""What an engine hands a sink: an event, the request's error, or None: the request has ended."""


class EventSink(Protocol):
    """Where an engine delivers one request's output, from its own threads; ``put`` must not block."""

    def put(self, item: EventItem) -> None:
        """Take the next event; or the request's error (no event follows); or None, last: every row has left."""
        ...


@runtime_checkable  # the API's handlers take it as a dependency, which Litestar checks with isinstance
class InferenceEngine(Protocol):
    """Generates for base models and their tenants' adapters."""

    def tokenizer(self, base_model: str) -> Any:
        """Return the base model's tokenizer (with its chat template), for rendering prompts and counting tokens.

        Raises:
            EngineError: ``model_not_found`` when the base model is not configured or not on this machine.
        """
        ...

    def context_length(self, base_model: str) -> int:
        """Return the most tokens (prompt + completion) the base model takes."""
        ...

    def submit(self, request: GenerationRequest, sink: EventSink, *, cancelled: threading.Event) -> None:
        """Queue the request; its events go to ``sink`` as each choice's new text is decoded, then its finish.

        May block to check the request (and, for the local engine, to load the model or the adapter), so the
        API calls it on a worker thread; the generation itself runs on the engine's threads. Setting
        ``cancelled`` (the client went away) stops decoding for this request at the next token and frees its
        place in the batch; the sink still gets its None.

        Raises:
            EngineError: the request cannot be served (``model_not_found``, ``context_length_exceeded``,
                ``adapter_unavailable``, ``engine_unavailable``); nothing reaches the sink then. A failure
                found later reaches the sink as its error.
        """
        ...

    def forget(self, adapter_name: str) -> None:
        """Drop an adapter from every cache (its model was deleted): the next request for it must fail."""
        ...

    def close(self) -> None:
        """Stop background threads and free the models."""
        ...


def generate(engine: InferenceEngine, request: GenerationRequest, *, cancelled: threading.Event) -> BlockingEvents:
    """Submit ``request`` and return a blocking iterator of its events (for tools, benchmarks and tests).

    Raises:
        EngineError: as ``submit`` raises it.
    """
    events = BlockingEvents(cancelled)
    engine.submit(request, events, cancelled=cancelled)
    return events


class BlockingEvents:
    """A sink read as a blocking iterator; closing it (or dropping it before its end) sets ``cancelled``.

    Once the request is cancelled, events still queued are dropped: the iterator only waits for the engine to
    confirm that the rows have left, so when it ends the request holds no place in the batch.
    """

    def __init__(self, cancelled: threading.Event) -> None:
        """Read what the engine puts; ``cancelled`` is the request's flag."""
        self._items: queue.SimpleQueue[EventItem] = queue.SimpleQueue()
        self._cancelled = cancelled
        self._ended = False

    def put(self, item: EventItem) -> None:
        """Queue an item (called by the engine's threads)."""
        self._items.put(item)

    def __iter__(self) -> BlockingEvents:
        """Return the iterator itself."""
        return self

    def __next__(self) -> GenerationEvent:
        """Return the next event; raise the request's error if it failed mid-way."""
        while not self._ended:
            item = self._items.get()
            if item is None or isinstance(item, BaseException):
                self._ended = True
                if item is not None:
                    self.close()
                    raise item
            elif not self._cancelled.is_set():
                return item
        raise StopIteration

    def close(self) -> None:
        """Stop the request (its rows leave the batch at the next step)."""
        self._cancelled.set()

    def __del__(self) -> None:
        """An iterator dropped before its end cancels its request."""
        if not self._ended:
            self.close()

"""Rules of the legacy /v1/completions: prompts tokenized as they are, one choice set per prompt."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import msgspec
from msgspec import UNSET

from tunewright.api.completions.schemas import (
    CompletionChoice,
    CompletionLogprobs,
    CreateCompletionRequest,
    CreateCompletionResponse,
)
from tunewright.api.generation import EventRelay, call_engine, collect, open_stream, resolve_target, sse
from tunewright.api.metering import Meter
from tunewright.api.parameters import check_choices, completion_budget, invalid, sampling_params, unsupported
from tunewright.api.ratelimits.limiter import charged_tokens
from tunewright.api.spend.quota import admit_inference
from tunewright.inference.engine import GenerationRequest
from tunewright.storage.ids import new_id

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from litestar.response import Stream

    from tunewright.api.auth import Principal
    from tunewright.api.metering import CompletionUsage
    from tunewright.api.metrics import Metrics
    from tunewright.api.ratelimits.limiter import Admission, Quota
    from tunewright.inference.engine import GenerationEvent, InferenceEngine, ModelTarget, TokenLogprob
    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint


@dataclass
class Prepared:
    """The engine requests (one per prompt) and the prompts' text, for `echo`."""

    requests: list[GenerationRequest]
    texts: list[str]


async def create_completion(
    stores: Stores,
    settings: Settings,
    engine: InferenceEngine,
    data: CreateCompletionRequest,
    principal: Principal,
    limits: Quota,
    metrics: Metrics | None = None,
) -> CreateCompletionResponse | Stream:
    """Answer one completion request, as one JSON object or (`stream: true`) as server-sent events.

    The request is admitted against the project's rate limits once its prompts are tokenized.
    """
    meter = Meter(stores, principal, data.model, "completions", bool(data.stream), metrics=metrics)
    check_request(data, max_choices=settings.max_choices_per_request)
    await admit_inference(stores, settings, principal)
    project_id = principal.project_id or ""
    target = await anyio.to_thread.run_sync(
        partial(resolve_target, stores, settings, data.model, project_id=project_id)
    )

    async def admit(prepared: Prepared) -> Admission | None:
        return await limits.admit(principal, target.base_model, charged_tokens(prepared.requests))

    return await complete(engine, data, target, meter, project_id=project_id, admit=admit)


async def complete(
    engine: InferenceEngine,
    data: CreateCompletionRequest,
    target: ModelTarget,
    meter: Meter,
    *,
    project_id: str,
    token_ids: bool = False,
    admit: Callable[[Prepared], Awaitable[Admission | None]] | None = None,
) -> CreateCompletionResponse | Stream:
    """Run a checked request on `target` for `project_id` (whose turn its rows take in the engine).

    `token_ids` names logprobs' tokens `token_id:<id>` (inference nodes); `admit` takes the prepared request
    from the rate limits (the API's, not a node's).
    """
    prepared = await anyio.to_thread.run_sync(partial(prepare, engine, data, target, project_id=project_id))
    meter.base_model = target.base_model
    meter.prompt_tokens = sum(len(r.prompt_ids) for r in prepared.requests)
    if admit is not None:
        meter.admission = await admit(prepared)
    relay = EventRelay(engine, prepared.requests)
    answer = CompletionAnswer(data, prepared, token_ids=token_ids)
    if data.stream:
        return await open_stream(relay, meter, answer)
    return answer.response(await collect(relay, meter), meter.usage())


def check_request(data: CreateCompletionRequest, *, max_choices: int) -> None:
    """Refuse the fields we cannot honour where ignoring them would change the result, and too many choices.

    Raises:
        InvalidRequestError: naming the field.
    """
    n = data.n or 1
    check_choices(prompt_count(data.prompt), max(n, data.best_of or 0), max_choices)
    if data.suffix not in (None, UNSET):
        raise unsupported("suffix")
    if data.best_of not in (None, UNSET):
        if data.best_of < n:
            raise invalid("best_of", f"`best_of` ({data.best_of}) must be at least `n` ({n}).")
        if data.best_of > n:
            raise unsupported("best_of", "above `n` is not supported by this server (no server-side ranking)")
    if data.echo and data.logprobs not in (None, UNSET):
        raise unsupported("logprobs", "together with `echo` is not supported (no prompt log-probabilities)")
    if data.stream_options not in (None, UNSET) and not data.stream:
        raise invalid("stream_options", "`stream_options` is only allowed when `stream` is true.")


def prepare(
    engine: InferenceEngine, data: CreateCompletionRequest, target: ModelTarget, *, project_id: str
) -> Prepared:
    """Tokenize each prompt and size its completion (on a worker thread)."""
    tokenizer = call_engine(engine.tokenizer, target.base_model)
    context = call_engine(engine.context_length, target.base_model)
    requested = data.max_tokens or None
    top = data.logprobs if isinstance(data.logprobs, int) else None
    shared = sampling_params(
        data, max_new_tokens=1, vocab_size=len(tokenizer), logprobs=top is not None, top_logprobs=top or 0
    )
    requests, texts = [], []
    for ids, text in prompts(tokenizer, data.prompt):
        budget = completion_budget(len(ids), requested, default=DEFAULT_MAX_TOKENS, context=context, param="prompt")
        params = msgspec.structs.replace(shared, max_new_tokens=budget)
        requests.append(
            GenerationRequest(target=target, prompt_ids=ids, params=params, n=data.n or 1, project_id=project_id)
        )
        texts.append(text)
    return Prepared(requests=requests, texts=texts)


def prompt_count(prompt: Any) -> int:
    """How many prompts `prompt` holds (a string, or an array of token ids, is one), before tokenizing any."""
    if prompt is None or isinstance(prompt, str) or all(isinstance(p, int) for p in prompt):
        return 1
    return len(prompt)


def prompts(tokenizer: Any, prompt: Any) -> list[tuple[list[int], str]]:
    """Each prompt's token ids and text: strings tokenized as they are (no special tokens), ids checked.

    A null or empty prompt is the tokenizer's end-of-text token, as OpenAI's default `<|endoftext|>`.

    Raises:
        InvalidRequestError: a mixed array, or a token id outside the vocabulary.
    """
    if prompt is None or isinstance(prompt, str):
        items: list[Any] = [prompt or ""]
    elif all(isinstance(p, int) for p in prompt):
        items = [prompt]
    elif all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt):
        items = list(prompt)
    else:
        raise invalid("prompt", "must be a string, an array of strings, of token ids, or of token-id arrays.")
    out = []
    for item in items:
        if isinstance(item, str):
            ids = list(tokenizer(item, add_special_tokens=False)["input_ids"])
        else:
            ids = list(item)
            if any(token >= len(tokenizer) for token in ids):
                raise invalid("prompt", f"token ids must be below this model's vocabulary size ({len(tokenizer)}).")
        if not ids:
            ids = [tokenizer.eos_token_id]
        out.append((ids, item if isinstance(item, str) else tokenizer.decode(ids)))
    return out


class CompletionAnswer:
    """Assembles `text_completion` objects (the answer, or each streamed chunk) from engine events."""

    def __init__(self, data: CreateCompletionRequest, prepared: Prepared, *, token_ids: bool = False) -> None:
        """Fix the id, timestamp and echoed model shared by every object of the answer."""
        self.token_ids = token_ids
        self.id = new_id("completion")
        self.created = int(time.time())
        self.model = data.model
        self.n = data.n or 1
        self.echo = bool(data.echo)
        self.logprobs = data.logprobs not in (None, UNSET)
        self.include_usage = bool(data.stream_options and data.stream_options.include_usage)
        self.texts = prepared.texts
        self.choices = self.n * len(prepared.texts)
        self.offsets = [len(self._echo(i)) for i in range(self.choices)]

    def _echo(self, index: int) -> str:
        return self.texts[index // self.n] if self.echo else ""

    def _logprobs(self, index: int, entries: list[TokenLogprob]) -> CompletionLogprobs | None:
        if not self.logprobs:
            return None
        offsets = []
        for entry in entries:
            offsets.append(self.offsets[index])
            self.offsets[index] += len(entry.token)
        if self.token_ids:
            return CompletionLogprobs(
                text_offset=offsets,
                token_logprobs=[e.logprob for e in entries],
                tokens=[f"token_id:{e.token_id}" for e in entries],
                top_logprobs=[{f"token_id:{t.token_id}": t.logprob for t in e.top_logprobs} for e in entries],
            )
        return CompletionLogprobs(
            text_offset=offsets,
            token_logprobs=[e.logprob for e in entries],
            tokens=[e.token for e in entries],
            top_logprobs=[{t.token: t.logprob for t in e.top_logprobs} for e in entries],
        )

    def response(self, events: list[GenerationEvent], usage: CompletionUsage) -> CreateCompletionResponse:
        """The non-streamed answer."""
        texts = [self._echo(i) for i in range(self.choices)]
        finishes: list[Any] = ["stop"] * self.choices
        entries: list[list[TokenLogprob]] = [[] for _ in range(self.choices)]
        for event in events:
            texts[event.index] += event.text
            entries[event.index].extend(event.logprobs or [])
            if event.finish_reason is not None:
                finishes[event.index] = event.finish_reason
        choices = [
            CompletionChoice(finish_reason=finishes[i], index=i, logprobs=self._logprobs(i, entries[i]), text=texts[i])
            for i in range(self.choices)
        ]
        return CreateCompletionResponse(
            id=self.id, choices=choices, created=self.created, model=self.model, usage=usage
        )

    def _chunk(self, choices: list[CompletionChoice], usage: Any = None) -> bytes:
        return sse(
            CreateCompletionResponse(
                id=self.id,
                choices=choices,
                created=self.created,
                model=self.model,
                usage=usage if self.include_usage else UNSET,
            )
        )

    def opening(self) -> list[bytes]:
        """With `echo`, one chunk per choice carrying its prompt."""
        if not self.echo:
            return []
        return [
            self._chunk([CompletionChoice(finish_reason=None, index=i, logprobs=None, text=self._echo(i))])
            for i in range(self.choices)
        ]

    def on_event(self, event: GenerationEvent) -> list[bytes]:
        """One chunk per event: its text, and its choice's finish reason on the last."""
        logprobs = self._logprobs(event.index, list(event.logprobs or []))
        choice = CompletionChoice(
            finish_reason=event.finish_reason, index=event.index, logprobs=logprobs, text=event.text
        )
        return [self._chunk([choice])]

    def closing(self, usage: CompletionUsage) -> list[bytes]:
        """The usage chunk (`choices: []`) when `stream_options.include_usage` asked for it."""
        return [self._chunk([], usage)] if self.include_usage else []

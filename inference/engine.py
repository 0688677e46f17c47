"""The ``InferenceEngine`` protocol: what the API asks of whatever generates text (docs/architecture.md "Inference").

The API authenticates, resolves the model name to a ``ModelTarget`` (a base model, or a base model plus one
tenant's adapter), renders the prompt with the base model's chat template into token ids, and hands the engine
one ``GenerationRequest``. The engine yields ``GenerationEvent``s from a blocking iterator that the API drives on
a worker thread: one event per new piece of text of one choice, then that choice's finish. Two implementations:
``inference/local.py`` (transformers in this process, or in a ``tunewright inference`` node, with per-row LoRA)
and ``inference/remote.py`` (OpenAI-protocol servers with dynamic LoRA loading: ``tunewright inference`` nodes
or vLLM).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterator

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

    ``stop`` strings end a choice (not included in its text); ``logit_bias`` maps token ids to additive biases;
    ``top_logprobs`` > 0 implies ``logprobs``.
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
    """One API request: ``n`` choices of continuations of the same prompt.

    Choice ``i`` samples with seed ``params.seed + i`` when a seed is given, so ``n`` choices differ but the
    same request gives the same texts.
    """

    target: ModelTarget
    prompt_ids: list[int]
    params: SamplingParams
    n: int = 1


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


@runtime_checkable  # the API's dependency injection checks the engine it is handed against this protocol
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

    def generate(self, request: GenerationRequest, *, cancelled: threading.Event) -> Iterator[GenerationEvent]:
        """Run the request; yield each choice's new text as it is decoded, then its finish.

        Blocking: the API iterates it on a worker thread. Setting ``cancelled`` (the client went away) stops
        decoding for this request at the next token and frees its place in the batch.

        Raises:
            EngineError: the adapter cannot be loaded (``adapter_unavailable``: missing or corrupt; only this
                request fails), or the prompt does not fit (``context_length_exceeded``).
        """
        ...

    def forget(self, adapter_name: str) -> None:
        """Drop an adapter from every cache (its model was deleted): the next request for it must fail."""
        ...

    def close(self) -> None:
        """Stop background threads and free the models."""
        ...

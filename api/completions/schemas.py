"""Wire objects of the legacy /v1/completions, mirroring OpenAI's schemas field for field.

Streamed chunks have the response's own shape and `object`; their `finish_reason` is null until a choice ends,
as OpenAI sends it (the schema's enum lacks null: a deliberate deviation, named in the tests).
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, UnsetType

from tunewright.api.metering import CompletionUsage
from tunewright.api.parameters import (
    ChatCompletionStreamOptions,
    ChoiceCount,
    MaxTokens,
    Penalty,
    Seed,
    Stop,
    Temperature,
    TopP,
)
from tunewright.api.schemas import Request, Response

TokenId = Annotated[int, Meta(ge=0)]
# A string, or an array of strings, of token ids, or of token-id arrays (msgspec takes one array type per union,
# so the array's items are a union and `service.prompts` checks that they are all of one kind).
Prompt = str | Annotated[list[str | TokenId | Annotated[list[TokenId], Meta(min_length=1)]], Meta(min_length=1)]


class CreateCompletionRequest(Request, kw_only=True):
    """`CreateCompletionRequest`. `prompt` null means OpenAI's document separator (the tokenizer's EOS)."""

    model: str
    prompt: Prompt | None
    best_of: Annotated[int, Meta(ge=0, le=20)] | None | UnsetType = UNSET
    echo: bool | None | UnsetType = UNSET
    frequency_penalty: Penalty | None | UnsetType = UNSET
    logit_bias: dict[str, int] | None | UnsetType = UNSET
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None | UnsetType = UNSET
    max_tokens: MaxTokens | None | UnsetType = UNSET
    n: ChoiceCount | None | UnsetType = UNSET
    presence_penalty: Penalty | None | UnsetType = UNSET
    seed: Seed | None | UnsetType = UNSET
    stop: Stop | None | UnsetType = UNSET
    stream: bool | None | UnsetType = UNSET
    stream_options: ChatCompletionStreamOptions | None | UnsetType = UNSET
    suffix: str | None | UnsetType = UNSET
    temperature: Temperature | None | UnsetType = UNSET
    top_p: TopP | None | UnsetType = UNSET
    user: str | UnsetType = UNSET


class CompletionLogprobs(Response):
    """A choice's `logprobs`: the chosen tokens, their log-probabilities, the best alternatives, text offsets."""

    text_offset: list[int]
    token_logprobs: list[float]
    tokens: list[str]
    top_logprobs: list[dict[str, float]]


class CompletionChoice(Response):
    """One choice of a `text_completion` (null `finish_reason` only in a streamed chunk)."""

    finish_reason: Literal["stop", "length"] | None
    index: int
    logprobs: CompletionLogprobs | None
    text: str


class CreateCompletionResponse(Response, kw_only=True):
    """`CreateCompletionResponse`, also each streamed chunk; `model` echoes the request."""

    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    object: Literal["text_completion"] = "text_completion"
    usage: CompletionUsage | None | UnsetType = UNSET

"""The request parameters /v1/chat/completions and /v1/completions share: wire types, checks, sampling."""

from __future__ import annotations

from typing import Annotated, Literal, Protocol

from msgspec import UNSET, Meta, UnsetType

from tunewright.api.errors import InvalidRequestError, echo
from tunewright.api.schemas import Request
from tunewright.inference.engine import SamplingParams

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


class ChatCompletionStreamOptions(Request):
    """`ChatCompletionStreamOptions`: only with `stream: true`; obfuscation is never sent, so it is a no-op."""

    include_usage: bool | UnsetType = UNSET
    include_obfuscation: bool | UnsetType = UNSET


# ------------------------------------------------------------------------------------------- rules


def unsupported(param: str, what: str = "is not supported by this server") -> InvalidRequestError:
    """400 for a field we cannot honour and must not ignore (it would change the result)."""
    return InvalidRequestError(f"Unsupported parameter: '{param}' {what}.", param=param, code="unsupported_parameter")


def invalid(param: str, message: str) -> InvalidRequestError:
    """400 `invalid_value` naming `param`."""
    return InvalidRequestError(f"Invalid value for '{param}': {message}", param=param, code="invalid_value")


def check_choices(prompts: int, n: int, limit: int) -> None:
    """Refuse a request for more completions (prompts times `n`) than the server generates for one request.

    Raises:
        InvalidRequestError: naming `prompt` when the prompts alone are too many, else `n`.
    """
    if prompts * n <= limit:
        return
    asked = f"{prompts} prompts times n={n}: {prompts * n}" if prompts > 1 else f"n={n}"
    raise invalid(
        "prompt" if n == 1 else "n",
        f"this request asks for {asked} completions; this server generates at most {limit} per request.",
    )


def logit_bias_ids(bias: dict[str, int] | None | UnsetType, vocab_size: int) -> dict[int, float]:
    """Turn `{"<token id>": bias}` into `{id: bias}`: keys ASCII decimal token ids, biases -100 to 100.

    Checked here rather than on the field, so that the error names `logit_bias` (not `logit_bias[...]`).

    Raises:
        InvalidRequestError: a key is not a token id of the model, or a bias is out of range.
    """
    if not bias:
        return {}
    out: dict[int, float] = {}
    for key, value in bias.items():
        # ASCII digits only: str.isdigit() also holds for superscripts (int() fails) and other scripts' digits
        # (int() reads the Arabic-Indic one as 1).
        if not (key.isascii() and key.isdigit()) or int(key) >= vocab_size:
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


class SamplingFields(Protocol):
    """The sampling fields of a chat and of a legacy completion request, spelled alike in both."""

    temperature: float | None | UnsetType
    top_p: float | None | UnsetType
    seed: int | None | UnsetType
    stop: str | list[str] | None | UnsetType
    presence_penalty: float | None | UnsetType
    frequency_penalty: float | None | UnsetType
    logit_bias: dict[str, int] | None | UnsetType


def sampling_params(
    data: SamplingFields, *, max_new_tokens: int, vocab_size: int, logprobs: bool, top_logprobs: int
) -> SamplingParams:
    """The engine's `SamplingParams` for a request: OpenAI's defaults where a field is absent or null.

    The endpoints spell log-probabilities differently (chat: `logprobs` + `top_logprobs`; completions: one
    integer `logprobs`), so each passes what it asked for.

    Raises:
        InvalidRequestError: a `logit_bias` key that is not a token id of the model, or a bias out of range.
    """
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=1.0 if data.temperature in (None, UNSET) else data.temperature,  # type: ignore[arg-type]
        top_p=1.0 if data.top_p in (None, UNSET) else data.top_p,  # type: ignore[arg-type]
        seed=None if data.seed in (None, UNSET) else data.seed,  # type: ignore[arg-type]
        stop=stop_tuple(data.stop),
        presence_penalty=data.presence_penalty or 0.0,
        frequency_penalty=data.frequency_penalty or 0.0,
        logit_bias=logit_bias_ids(data.logit_bias, vocab_size),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )

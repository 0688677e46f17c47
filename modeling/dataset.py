"""Training data as token ids: each line of a format-valid JSONL file becomes ids and a loss mask.

The worker runs this after ``training_files.validate`` has passed the file, with the base model's own tokenizer and
chat template (no torch here: the tokenizer is handed in). Three kinds of line (``training_files.formats``):

- chat: ``render_chat`` with the line's ``tools`` (or the deprecated ``functions``); the mask covers the
  trained assistant messages (``weight`` 1 or absent) and their end-of-turn tokens;
- prompt/completion: the prompt's tokens, then the completion's tokens and the tokenizer's eos token, each part
  tokenized on its own (as inference sees the prompt); the mask covers the completion and the eos token;
- preference (``method="dpo"``): a ``PreferenceExample`` holding the prompt (the input messages and the
  assistant header) and the ids of each output (its content and the template's end-of-turn token);
- reinforcement prompt (``method="reinforcement"``, a chat line): a ``PromptExample``, the messages with the
  assistant header, kept with the line for the grader. A prompt longer than ``max_tokens`` keeps its last
  ``max_tokens`` tokens (the assistant header must stay, the model answers right after it).

An example longer than ``max_tokens`` keeps its first ``max_tokens`` tokens, as OpenAI truncates, and its line
is recorded for the warning event; one left with no target token is an error naming the line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import msgspec

from tunewright.modeling.chat import ChatTemplateError, render_chat, template_tools
from tunewright.training_files.errors import DatasetError, DatasetParam, Problem
from tunewright.training_files.formats import NON_PREFERRED_KEYS, PREFERRED_KEYS, DataFormat, detect_format
from tunewright.training_files.validate import MAX_PROBLEMS

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from transformers import PreTrainedTokenizerBase

__all__ = ["PreferenceExample", "PromptExample", "TokenizedDataset", "TokenizedExample", "tokenize_dataset"]

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class TokenizedExample:
    """One supervised example: ``mask[i] == 1`` where ``ids[i]`` is a target token.

    Attributes:
        ids: Token ids, at most ``max_tokens`` of them.
        mask: 0/1 per id.
        line: 1-based physical line number in the file.
    """

    ids: list[int]
    mask: list[int]
    line: int

    @property
    def length(self) -> int:
        """Tokens in the sequence the model sees."""
        return len(self.ids)

    @property
    def total_tokens(self) -> int:
        """Tokens counted for billing."""
        return len(self.ids)

    @property
    def target_tokens(self) -> int:
        """Tokens the loss covers."""
        return sum(self.mask)


@dataclass(frozen=True, slots=True)
class PreferenceExample:
    """One DPO example: a prompt and two completions, each to be appended to the prompt.

    Attributes:
        prompt: The input messages rendered with the assistant header (``add_generation_prompt=True``).
        chosen: The preferred output's ids: its content and the template's end-of-turn token.
        rejected: The non-preferred output's ids, likewise.
        line: 1-based physical line number in the file.
    """

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    line: int

    @property
    def length(self) -> int:
        """Tokens in the longer of the two sequences the model sees (prompt + one completion)."""
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))

    @property
    def total_tokens(self) -> int:
        """Tokens counted for billing: the prompt once and both completions."""
        return len(self.prompt) + len(self.chosen) + len(self.rejected)

    @property
    def target_tokens(self) -> int:
        """Tokens the loss covers: both completions."""
        return len(self.chosen) + len(self.rejected)


@dataclass(frozen=True, slots=True)
class PromptExample:
    """One reinforcement example: a prompt the model answers, and the line itself (the grader's ``item``).

    Attributes:
        prompt: The messages rendered with the assistant header (``add_generation_prompt=True``).
        item: The decoded line, which the grader's ``{{ item.… }}`` templates read.
        line: 1-based physical line number in the file.
    """

    prompt: list[int]
    item: dict[str, Any]
    line: int

    @property
    def length(self) -> int:
        """Tokens of the prompt (the completions are sampled while training)."""
        return len(self.prompt)

    @property
    def total_tokens(self) -> int:
        """Tokens counted for billing before sampling: the prompt's (each step adds what it sampled)."""
        return len(self.prompt)

    @property
    def target_tokens(self) -> int:
        """Tokens the loss covers before sampling: none are known yet, so the prompt stands for them."""
        return len(self.prompt)


E = TypeVar("E", TokenizedExample, PreferenceExample, PromptExample)


@dataclass(frozen=True, slots=True)
class TokenizedDataset(Generic[E]):
    """A tokenized training or validation file.

    Attributes:
        examples: The examples, in file order.
        total_tokens: Tokens of all examples after truncation (what one epoch is billed).
        target_tokens: Tokens the loss covers, after truncation.
        truncated_lines: Line numbers of the examples cut to ``max_tokens``, in file order.
        max_length: Length of the longest example after truncation (0 when there are none).
    """

    examples: list[E]
    total_tokens: int
    target_tokens: int
    truncated_lines: list[int] = field(default_factory=list)
    max_length: int = 0

    @property
    def lengths(self) -> list[int]:
        """Sequence length of each example, for ``plan_batches``."""
        return [example.length for example in self.examples]

    def billed_tokens(self, n_epochs: int) -> int:
        """Return the training tokens billed for ``n_epochs`` epochs: ``total_tokens * n_epochs``."""
        return self.total_tokens * n_epochs


@overload
def tokenize_dataset(
    lines: Iterable[bytes | str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    param: DatasetParam,
    method: Literal["supervised"],
    max_tokens: int,
) -> TokenizedDataset[TokenizedExample]: ...
@overload
def tokenize_dataset(
    lines: Iterable[bytes | str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    param: DatasetParam,
    method: Literal["dpo"],
    max_tokens: int,
) -> TokenizedDataset[PreferenceExample]: ...
@overload
def tokenize_dataset(
    lines: Iterable[bytes | str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    param: DatasetParam,
    method: str,
    max_tokens: int,
) -> TokenizedDataset[TokenizedExample] | TokenizedDataset[PreferenceExample]: ...
def tokenize_dataset(
    lines: Iterable[bytes | str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    param: DatasetParam,
    method: str,
    max_tokens: int,
) -> TokenizedDataset[TokenizedExample] | TokenizedDataset[PreferenceExample]:
    """Tokenize a format-valid JSONL file, truncating long examples to their first ``max_tokens`` tokens.

    Args:
        lines: The file's physical lines (bytes or str, line ends optional); blank lines are skipped but
            counted, so line numbers match the file.
        tokenizer: The base model's fast tokenizer, with its chat template.
        param: ``training_file`` or ``validation_file``: prefixes error messages and picks the error code.
        method: ``supervised`` (chat or prompt/completion lines) or ``dpo`` (preference lines).
        max_tokens: The context length: the model's maximum positions, capped by a setting.

    Returns:
        The examples with their token counts and the lines that were truncated.

    Raises:
        DatasetError: Examples with no target token left within ``max_tokens``, or that the base model's chat
            template cannot render (up to ``MAX_PROBLEMS`` lines).
        ValueError: ``method`` is unknown, ``max_tokens`` below 1, or a line is not in the method's format.
    """
    if method not in ("supervised", "dpo", "reinforcement"):
        raise ValueError(f"unknown method {method!r}: expected 'supervised', 'dpo' or 'reinforcement'")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    examples: list[Any] = []
    truncated: list[int] = []
    problems: list[Problem] = []
    for line, obj in _decoded(lines):
        try:
            encoded = _encoder(obj, method, line)(tokenizer, obj, line)
        except ChatTemplateError as exc:
            problems.append(Problem(line, "", str(exc)))  # the message names the field when there is one
            if len(problems) >= MAX_PROBLEMS:
                break
            continue
        example = _truncate(encoded, max_tokens)
        if example is not encoded:
            truncated.append(line)
        if example.target_tokens == 0:
            problems.append(Problem(line, "", _no_target_message(encoded, max_tokens)))
            if len(problems) >= MAX_PROBLEMS:
                break
        examples.append(example)
    if problems:
        raise DatasetError(problems, param=param)
    return TokenizedDataset(
        examples=examples,
        total_tokens=sum(example.total_tokens for example in examples),
        target_tokens=sum(example.target_tokens for example in examples),
        truncated_lines=truncated,
        max_length=max((example.length for example in examples), default=0),
    )


def _decoded(lines: Iterable[bytes | str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(physical line number, decoded object)`` for each non-blank line."""
    for number, item in enumerate(lines, start=1):
        raw = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
        if number == 1:
            raw = raw.removeprefix(_BOM)
        if raw.strip():
            yield number, msgspec.json.decode(raw)


_Encoder = Callable[["PreTrainedTokenizerBase", dict[str, Any], int], Any]


def _encoder(obj: dict[str, Any], method: str, line: int) -> _Encoder:
    data_format = detect_format(obj)
    if method == "reinforcement" and data_format == DataFormat.CHAT:
        return encode_prompt
    wanted = (DataFormat.PREFERENCE,) if method == "dpo" else (DataFormat.CHAT, DataFormat.PROMPT_COMPLETION)
    if data_format not in wanted:
        raise ValueError(f"line {line}: a {method} job cannot use a {data_format or 'unknown'} example")
    return _ENCODERS[data_format]


def _no_target_message(example: TokenizedExample | PreferenceExample, max_tokens: int) -> str:
    if example.length <= max_tokens:
        return "example has no assistant token to train on"
    return (
        f"example is {example.length} tokens long; the model's context is {max_tokens} tokens and truncating it "
        "there would cut off every assistant token, leaving nothing to train on"
    )


def _truncate(example: E, max_tokens: int) -> E:
    """Keep the first ``max_tokens`` tokens; return ``example`` itself when it already fits."""
    if example.length <= max_tokens:
        return example
    if isinstance(example, TokenizedExample):
        return TokenizedExample(example.ids[:max_tokens], example.mask[:max_tokens], example.line)
    if isinstance(example, PromptExample):
        return PromptExample(example.prompt[-max_tokens:], example.item, example.line)
    room = max(max_tokens - len(example.prompt), 0)
    return PreferenceExample(example.prompt[:max_tokens], example.chosen[:room], example.rejected[:room], example.line)


def encode_chat(tokenizer: PreTrainedTokenizerBase, obj: dict[str, Any], line: int) -> TokenizedExample:
    """Render a chat line with the tokenizer's chat template; the mask covers its trained assistant turns."""
    chat = render_chat(tokenizer, obj["messages"], tools=_tools(obj))
    return TokenizedExample(ids=chat.ids, mask=chat.mask, line=line)


def encode_prompt_completion(tokenizer: PreTrainedTokenizerBase, obj: dict[str, Any], line: int) -> TokenizedExample:
    """Tokenize the prompt, then the completion and eos; the mask covers the completion and eos."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ChatTemplateError("the tokenizer has no eos token to end prompt/completion examples with")
    prompt = list(tokenizer(obj.get("prompt") or "", add_special_tokens=False)["input_ids"])
    completion = [*tokenizer(obj["completion"], add_special_tokens=False)["input_ids"], eos]
    return TokenizedExample(ids=prompt + completion, mask=[0] * len(prompt) + [1] * len(completion), line=line)


def encode_preference(tokenizer: PreTrainedTokenizerBase, obj: dict[str, Any], line: int) -> PreferenceExample:
    """Render a DPO line: the prompt with the assistant header, and each output's own tokens."""
    given = obj["input"]
    messages, tools = given["messages"], _tools(given)
    prompt = render_chat(tokenizer, messages, tools=tools, add_generation_prompt=True).ids
    context = [{**message, "weight": 0} if message["role"] == "assistant" else message for message in messages]

    def reply(keys: tuple[str, str]) -> list[int]:
        output = obj.get(keys[0]) or obj[keys[1]]
        chat = render_chat(tokenizer, context + output, tools=tools)
        return [token for token, bit in zip(chat.ids, chat.mask, strict=True) if bit]

    return PreferenceExample(prompt=prompt, chosen=reply(PREFERRED_KEYS), rejected=reply(NON_PREFERRED_KEYS), line=line)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, obj: dict[str, Any], line: int) -> PromptExample:
    """Render a reinforcement line's messages with the assistant header: the prompt the model answers."""
    prompt = render_chat(tokenizer, obj["messages"], tools=_tools(obj), add_generation_prompt=True, with_mask=False)
    return PromptExample(prompt=prompt.ids, item=obj, line=line)


_ENCODERS: dict[DataFormat, _Encoder] = {
    DataFormat.CHAT: encode_chat,
    DataFormat.PROMPT_COMPLETION: encode_prompt_completion,
    DataFormat.PREFERENCE: encode_preference,
}


def _tools(obj: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Return the line's ``tools`` and deprecated ``functions`` as the template's tools; ``None`` without either."""
    return template_tools(obj.get("tools"), obj.get("functions"))

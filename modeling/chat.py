"""One chat renderer for training and serving: an OpenAI conversation to the token ids a model sees.

Training renders each example with ``render_chat`` (ids and an assistant loss mask); serving renders the
conversation so far with ``add_generation_prompt=True`` through the same function, so a tuned model is asked
with exactly the tokens it was trained on up to the start of its reply (docs/architecture.md "One renderer").
Both go through ``template_messages`` and ``template_tools``, which turn OpenAI's message and tool objects into
what chat templates read: nulls dropped, text parts joined, deprecated ``function_call``/``function`` messages
spelled as tool calls and tool replies, ``functions`` as tools, and the keys of tools and tool calls in one order
(templates print tools as JSON, and the API's decoded objects do not keep the order a client wrote).

The assistant mask is built here rather than by transformers: its ``return_assistant_tokens_mask`` silently
gives all zeros for templates without a ``{% generation %}`` block, which is most of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from transformers import PreTrainedTokenizerBase


class ChatTemplateError(ValueError):
    """The base model cannot be given this conversation: its template cannot render it, or a part is not text.

    Attributes:
        param: The field at fault (``messages[0].content[1].type``) when one is, else ``None``.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class RenderedChat:
    """A chat as token ids, with ``mask[i] == 1`` on the assistant tokens that are trained.

    ``mask`` is ``None`` when it was not asked for (serving needs only the ids).
    """

    ids: list[int]
    mask: list[int] | None


def template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy OpenAI chat messages into the form chat templates read.

    Null fields are dropped (a null counts as absent), as are ``weight`` and ``refusal``; an array of content
    parts becomes the concatenation of its text parts (refusal parts are left out); a deprecated
    ``function_call`` becomes a one-element ``tool_calls`` and a ``function`` message the ``tool`` message
    answering it.

    Raises:
        ChatTemplateError: a content part that is not text (an image, audio, a file): the models read text only,
            and training on a conversation without it would teach something else than the file says.
    """
    out = []
    for index, message in enumerate(messages):
        fields = {key: value for key, value in message.items() if value is not None and key not in _DROPPED}
        if isinstance(fields.get("content"), list):
            fields["content"] = _text_of(fields["content"], index)
        if "function_call" in fields:
            call = fields.pop("function_call")
            fields.setdefault("tool_calls", [{"id": f"call_{call['name']}", "type": "function", "function": call}])
        if isinstance(fields.get("tool_calls"), list):
            fields["tool_calls"] = [_ordered(call, _CALL_KEYS, _CALL_FUNCTION_KEYS) for call in fields["tool_calls"]]
        if fields.get("role") == "function":
            fields = {"role": "tool", "tool_call_id": f"call_{fields['name']}", "content": fields.get("content", "")}
        out.append(fields)
    return out


_DROPPED = frozenset({"weight", "refusal"})
_TEXT_PARTS = frozenset({"text", "refusal"})
_TOOL_KEYS = ("type", "function")
_FUNCTION_KEYS = ("name", "description", "parameters", "strict")
_CALL_KEYS = ("id", "type", "function")
_CALL_FUNCTION_KEYS = ("name", "arguments")


def _text_of(parts: list[Any], index: int) -> str:
    """The concatenated text of a content array; ``ChatTemplateError`` naming the first part that is not text."""
    for position, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS:
            raise ChatTemplateError(
                f"messages[{index}].content[{position}] is a {kind!r} part; the base model reads text only",
                param=f"messages[{index}].content[{position}].type",
            )
    return "".join(part.get("text", "") for part in parts if part["type"] == "text")


def _ordered(obj: Any, keys: tuple[str, ...], function_keys: tuple[str, ...]) -> Any:
    """``obj`` with ``keys`` first (then any others), and likewise its ``function`` object with ``function_keys``."""
    if not isinstance(obj, dict):
        return obj
    out = {key: obj[key] for key in keys if key in obj} | obj
    if isinstance(out.get("function"), dict):
        function = out["function"]
        out["function"] = {key: function[key] for key in function_keys if key in function} | function
    return out


def template_tools(
    tools: Sequence[dict[str, Any]] | None, functions: Sequence[dict[str, Any]] | None = None
) -> list[dict[str, Any]] | None:
    """Return the tool definitions for the template: ``tools``, then deprecated ``functions`` as tools."""
    out = list(tools or [])
    out += [{"type": "function", "function": function} for function in functions or []]
    return [_ordered(tool, _TOOL_KEYS, _FUNCTION_KEYS) for tool in out] or None


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, Any]],
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    with_mask: bool = True,
) -> RenderedChat:
    """Render a chat with the tokenizer's own chat template into token ids and an assistant loss mask.

    The mask is 1 on the tokens of each trained assistant message (``weight`` 1 or absent): its content, tool
    calls and end-of-turn token, not its role header nor the whitespace after the end-of-turn token. It is
    found from character spans: the text up to a message's generation prompt and the text up to its end must
    each be a prefix of the whole text, and tokens overlapping the span between them are masked.

    Args:
        tokenizer: A fast tokenizer with a chat template.
        messages: OpenAI chat messages as JSON objects (``template_messages`` is applied here).
        tools: Tool definitions for the template (``template_tools``).
        add_generation_prompt: Append the assistant header: the prompt a model answers when serving.
        with_mask: Compute the mask (training); serving leaves it out, which renders the template once.

    Returns:
        The ids, exactly as the template's text tokenizes, and the mask.

    Raises:
        ChatTemplateError: the template cannot render the chat, is not prefix-stable, or the tokenizer gives no
            character offsets.
    """
    if with_mask and not tokenizer.is_fast:
        raise ChatTemplateError("render_chat needs a fast tokenizer (character offsets)")
    chat = template_messages(messages)
    text = _render(tokenizer, chat, tools, add_generation_prompt=add_generation_prompt)
    if not with_mask:
        return RenderedChat(ids=list(tokenizer(text, add_special_tokens=False)["input_ids"]), mask=None)
    spans = [_assistant_span(tokenizer, chat, tools, k, text) for k, m in enumerate(messages) if _trained(m)]
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoding["input_ids"])
    mask = [
        int(any(start < end_ and begin < end for begin, end_ in spans)) for start, end in encoding["offset_mapping"]
    ]
    return RenderedChat(ids=ids, mask=mask)


def _trained(message: dict[str, Any]) -> bool:
    return message.get("role") == "assistant" and message.get("weight", 1) != 0


def _render(
    tokenizer: PreTrainedTokenizerBase,
    chat: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    *,
    add_generation_prompt: bool,
) -> str:
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            list(chat),
            tools=list(tools) if tools else None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except (TemplateError, TypeError, KeyError, ValueError, IndexError, AttributeError) as exc:
        # Templates differ in what they render: SmolLM2's, for one, has no tool calls and needs text content.
        raise ChatTemplateError(f"the base model's chat template cannot render this conversation ({exc})") from exc
    if not isinstance(text, str):
        raise ChatTemplateError(f"the chat template rendered {type(text).__name__}, not text")
    return text


def _assistant_span(
    tokenizer: PreTrainedTokenizerBase,
    chat: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    index: int,
    text: str,
) -> tuple[int, int]:
    """Return the character span of message ``index`` (an assistant turn) in ``text``, header excluded."""
    prompt = _render(tokenizer, chat[:index], tools, add_generation_prompt=True)
    upto = _render(tokenizer, chat[: index + 1], tools, add_generation_prompt=False)
    if not (upto.startswith(prompt) and text.startswith(upto)):
        raise ChatTemplateError(
            f"the chat template is not prefix-stable at messages[{index}]: rendering fewer messages does not give "
            "a prefix of the whole chat, so the assistant tokens cannot be located"
        )
    # The whitespace after the end-of-turn token (ChatML's newline) belongs to no turn and is not generated.
    end = len(upto.rstrip())
    return len(prompt), max(end, len(prompt))

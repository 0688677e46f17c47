"""Training-line formats: detect which one a line is in, and check it against that format's rules.

Pure Python (the API imports it through ``training_files.validate``). Three formats (docs/openai-compatibility.md
"Training files"):

- ``chat``: ``{"messages": [...], "tools"?, "parallel_tool_calls"?, "functions"?}`` (rules in
  ``training_files.chat_format``);
- ``prompt_completion`` (legacy): ``{"prompt": str, "completion": non-empty str}``;
- ``preference`` (DPO): ``{"input": {"messages", "tools"?, "parallel_tool_calls"?}, "preferred_output": [one
  assistant message], "non_preferred_output": [one assistant message]}``; the old schema's
  ``preferred_completion`` / ``non_preferred_completion`` spellings are accepted too.

A reinforcement job's lines are chat prompts (``training_files.reinforcement``). Keys outside a format's own are
ignored at the top level of a line (people keep ids and metadata there).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from tunewright.training_files.chat_format import check_chat_example, check_messages, check_tool_fields, got, present
from tunewright.training_files.errors import Problem, Problems, json_type
from tunewright.training_files.reinforcement import check_reinforcement_example

if TYPE_CHECKING:
    from collections.abc import Callable


class DataFormat(StrEnum):
    """The format of a training line (and of a whole file: all its lines share one)."""

    CHAT = "chat"
    PROMPT_COMPLETION = "prompt_completion"
    PREFERENCE = "preference"


PREFERRED_KEYS = ("preferred_output", "preferred_completion")
NON_PREFERRED_KEYS = ("non_preferred_output", "non_preferred_completion")
_PREFERENCE_KEYS = frozenset({"input", *PREFERRED_KEYS, *NON_PREFERRED_KEYS})


def detect_format(obj: dict[str, Any]) -> DataFormat | None:
    """Return the format a line's keys announce: ``messages``, then DPO keys, then prompt/completion."""
    if "messages" in obj:
        return DataFormat.CHAT
    if not _PREFERENCE_KEYS.isdisjoint(obj):
        return DataFormat.PREFERENCE
    if "prompt" in obj or "completion" in obj:
        return DataFormat.PROMPT_COMPLETION
    return None


def validate_example(
    obj: Any,
    line_no: int,
    *,
    method: str = "supervised",
    extra: Callable[[dict[str, Any], Problems], None] | None = None,
) -> list[Problem]:
    """Check one decoded line against the rules of the format it is in.

    Args:
        obj: The decoded JSON value of the line.
        line_no: Its 1-based physical line number, used in the problems.
        method: The job's method: a ``reinforcement`` job's chat lines are prompts
            (``training_files.reinforcement.check_reinforcement_example``).
        extra: A further check of a line in a known format (a reinforcement job's grader templates).

    Returns:
        The problems found, in field order; empty when the line is a valid example.
    """
    out = Problems(line_no)
    if not isinstance(obj, dict):
        out.add("", f"expected a JSON object, got {json_type(obj)}")
        return out.items
    data_format = detect_format(obj)
    if data_format is None:
        out.add(
            "",
            "is not a training example: expected messages (chat), prompt and completion, or input with "
            "preferred_output and non_preferred_output (preference)",
        )
    elif method == "reinforcement" and data_format == DataFormat.CHAT:
        check_reinforcement_example(obj, out)
    else:
        _CHECKS[data_format](obj, out)
    if data_format is not None and extra is not None:
        extra(obj, out)
    return out.items


def check_prompt_completion_example(obj: dict[str, Any], out: Problems) -> None:
    """Check a legacy line: ``prompt`` is a string, ``completion`` a non-empty string."""
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if not isinstance(prompt, str):
        out.add("prompt", "must be a string" + got(prompt))
    if not isinstance(completion, str) or not completion:
        out.add("completion", "must be a non-empty string" + got(completion))


def check_preference_example(obj: dict[str, Any], out: Problems) -> None:
    """Check a DPO line: a chat ``input`` that ends before an assistant turn, and the two outputs."""
    prompt = obj.get("input")
    if not isinstance(prompt, dict):
        out.add("input", "must be an object holding messages" + got(prompt))
    else:
        messages = prompt.get("messages")
        check_messages(messages, "input.messages", out, require_target=False)
        last = messages[-1] if isinstance(messages, list) and messages else None
        if isinstance(last, dict) and last.get("role") == "assistant":
            out.add(
                f"input.messages[{len(messages) - 1}]",
                "must not be an assistant message: the outputs are the assistant's reply",
            )
        check_tool_fields(prompt, "input.", out)
    preferred = _check_output(obj, PREFERRED_KEYS, out)
    non_preferred = _check_output(obj, NON_PREFERRED_KEYS, out)
    if preferred is not None and preferred == non_preferred:
        out.add(f"{_given(obj, NON_PREFERRED_KEYS)}[0].content", "must differ from the preferred output")


def _given(obj: dict[str, Any], keys: tuple[str, str]) -> str:
    return keys[1] if obj.get(keys[0]) is None and obj.get(keys[1]) is not None else keys[0]


def _check_output(obj: dict[str, Any], keys: tuple[str, str], out: Problems) -> str | None:
    """Check one output array (either spelling); return its assistant content when valid."""
    fields = present(obj)
    if keys[0] in fields and keys[1] in fields:
        out.add(keys[1], f"cannot be given together with {keys[0]}")
        return None
    key = _given(obj, keys)
    value = fields.get(key)
    if not isinstance(value, list) or len(value) != 1:
        reason = "is required" if value is None else "must be an array holding exactly one assistant message"
        out.add(key, reason)
        return None
    message = value[0]
    if not isinstance(message, dict):
        out.add(f"{key}[0]", f"must be an object, got {json_type(message)}")
        return None
    if message.get("role") != "assistant":
        out.add(f"{key}[0].role", "must be 'assistant'" + got(message.get("role")))
    content = message.get("content")
    if not isinstance(content, str) or not content:
        out.add(f"{key}[0].content", "must be a non-empty string" + got(content))
        return None
    return content


_CHECKS: dict[DataFormat, Callable[[dict[str, Any], Problems], None]] = {
    DataFormat.CHAT: check_chat_example,
    DataFormat.PROMPT_COMPLETION: check_prompt_completion_example,
    DataFormat.PREFERENCE: check_preference_example,
}

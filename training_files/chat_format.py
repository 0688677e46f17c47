"""Rules for chat-format training lines: ``messages``, ``tools``, ``functions``, ``parallel_tool_calls``.

Pure Python (the API imports it through ``training_files.validate``). What is enforced, beyond the types of each
field (a JSON ``null`` counts as an absent field everywhere):

- ``messages`` is a non-empty array of objects; ``role`` is one of ``ROLES``; no keys outside
  ``MESSAGE_KEYS``; ``weight``, ``tool_calls``, ``function_call`` and ``refusal`` only on assistant messages,
  ``tool_call_id`` only (and always) on tool messages, ``name`` always on function messages.
- ``content`` is a non-empty string or a non-empty array of ``text`` parts (``image_url`` parts only in user
  messages); it may be absent only on an assistant message that carries ``tool_calls`` or ``function_call``,
  and on a function message.
- ``weight`` is 0 or 1; ``tool_calls[*].function.arguments`` is a string holding a JSON object; a tool
  message's ``tool_call_id`` is the id of a tool call made by an earlier assistant message.
- Order: the first assistant message that is trained on (weight 1, the default) comes after at least one
  user, tool or function message. System and developer messages may appear anywhere, and consecutive
  messages of one role are allowed, as OpenAI allows both.
- A supervised example has at least one assistant message with weight 1.
- ``tools[*]`` is ``{type: "function", function: {name, description?, parameters?, strict?}}`` with a name of
  1-64 characters from ``[A-Za-z0-9_-]``, unique within the example; ``functions`` (deprecated) holds 1-128
  such function definitions.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from tunewright.training_files.errors import Problems, echo, json_type

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "function_call", "weight", "refusal")
ASSISTANT_ONLY_KEYS = ("tool_calls", "function_call", "weight", "refusal")
FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_FUNCTIONS = 128

_PROMPT_ROLES = frozenset({"user", "tool", "function"})


def got(value: Any) -> str:
    """Return `` (got <value>)`` for an error message."""
    return f" (got {echo(value)})"


def decode_reason(exc: msgspec.DecodeError) -> str:
    """Turn a msgspec decode error into a short reason for "not valid JSON: <reason>"."""
    text = str(exc).removeprefix("JSON is malformed: ").split(" - at `$", 1)[0]  # msgspec's path says nothing here
    return "unexpected end of data" if text == "Input data was truncated" else text


def present(obj: dict[str, Any]) -> dict[str, Any]:
    """Return the fields of ``obj`` that are not ``null`` (a null field counts as absent)."""
    return {key: value for key, value in obj.items() if value is not None}


def check_chat_example(obj: dict[str, Any], out: Problems) -> None:
    """Check a supervised chat line: its messages, with a trained assistant message, and its tools."""
    check_messages(obj.get("messages"), "messages", out, require_target=True)
    check_tool_fields(obj, "", out)


def check_messages(messages: Any, path: str, out: Problems, *, require_target: bool) -> None:
    """Check a ``messages`` array and the order of its turns.

    Args:
        messages: The decoded ``messages`` value.
        path: Field path of the array (``messages`` or ``input.messages``).
        out: Where problems go.
        require_target: Whether an assistant message with weight 1 is required.
    """
    if not isinstance(messages, list) or not messages:
        out.add(path, "must be a non-empty array of messages" + got(messages))
        return
    call_ids: set[str] = set()
    prompted = target_seen = unknown_role = False
    for index, message in enumerate(messages):
        item = f"{path}[{index}]"
        if not isinstance(message, dict):
            out.add(item, f"must be an object, got {json_type(message)}")
            unknown_role = True
            continue
        fields = present(message)
        role = check_message(fields, item, out, call_ids)
        unknown_role = unknown_role or role is None
        prompted = prompted or role in _PROMPT_ROLES
        # A bad weight was reported already; counting it as trained avoids a second, misleading problem.
        if role == "assistant" and fields.get("weight", 1) != 0 and not target_seen:
            target_seen = True
            if not prompted and not unknown_role:
                out.add(item, "is the first trained assistant message, but no user or tool message precedes it")
    if require_target and not target_seen and not unknown_role:
        out.add(path, "has no assistant message with weight 1 to train on")


def check_message(fields: dict[str, Any], path: str, out: Problems, call_ids: set[str]) -> str | None:
    """Check one message (its non-null fields); return its role when the role is valid.

    Tool call ids made by an assistant message are added to ``call_ids``; a tool message must answer one.
    """
    role = fields.get("role")
    if role not in ROLES:
        reason = "is required" if role is None else f"must be one of {', '.join(ROLES)}{got(role)}"
        out.add(f"{path}.role", reason)
        return None
    for key in fields:
        if key not in MESSAGE_KEYS:
            out.add(f"{path}.{key[:200]}", f"is not allowed; a message may hold only {', '.join(MESSAGE_KEYS)}")
    _check_role_keys(fields, role, path, out)
    if "name" in fields and not (isinstance(fields["name"], str) and fields["name"]):
        out.add(f"{path}.name", "must be a non-empty string" + got(fields["name"]))
    if role == "assistant":
        _check_assistant(fields, path, out, call_ids)
    else:
        optional = role == "function"
        check_content(fields.get("content"), f"{path}.content", out, images=role == "user", optional=optional)
    if role == "tool":
        _check_tool_reply(fields, path, out, call_ids)
    return role


def _check_role_keys(fields: dict[str, Any], role: str, path: str, out: Problems) -> None:
    if role != "assistant":
        for key in ASSISTANT_ONLY_KEYS:
            if key in fields:
                out.add(f"{path}.{key}", "is only allowed on assistant messages")
    if role != "tool" and "tool_call_id" in fields:
        out.add(f"{path}.tool_call_id", "is only allowed on tool messages")
    if role == "function" and "name" not in fields:
        out.add(f"{path}.name", "is required on function messages")


def _check_assistant(fields: dict[str, Any], path: str, out: Problems, call_ids: set[str]) -> None:
    weight = fields.get("weight", 1)
    if type(weight) is not int or weight not in (0, 1):
        out.add(f"{path}.weight", "must be 0 or 1" + got(weight))
    if "tool_calls" in fields:
        check_tool_calls(fields["tool_calls"], f"{path}.tool_calls", out, call_ids)
    if "function_call" in fields:
        check_function_call(fields["function_call"], f"{path}.function_call", out)
    if "refusal" in fields and not isinstance(fields["refusal"], str):
        out.add(f"{path}.refusal", "must be a string" + got(fields["refusal"]))
    calls = "tool_calls" in fields or "function_call" in fields
    check_content(fields.get("content"), f"{path}.content", out, images=False, optional=calls)


def _check_tool_reply(fields: dict[str, Any], path: str, out: Problems, call_ids: set[str]) -> None:
    call_id = fields.get("tool_call_id")
    if call_id is None:
        out.add(f"{path}.tool_call_id", "is required on tool messages")
    elif not isinstance(call_id, str):
        out.add(f"{path}.tool_call_id", "must be a string" + got(call_id))
    elif call_id not in call_ids:
        out.add(
            f"{path}.tool_call_id",
            "does not match the id of a tool call in an earlier assistant message" + got(call_id),
        )


def check_content(value: Any, path: str, out: Problems, *, images: bool, optional: bool) -> None:
    """Check a message's ``content``: a non-empty string or a non-empty array of content parts.

    Args:
        value: The content, ``None`` when absent or null.
        path: Field path of the content.
        out: Where problems go.
        images: Whether ``image_url`` parts are allowed (user messages only).
        optional: Whether the content may be absent or empty.
    """
    if value is None or value in ("", []):
        if not optional:
            out.add(path, "is required" if value is None else "must not be empty")
        return
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        out.add(path, f"must be a string or an array of content parts, got {json_type(value)}")
        return
    for index, part in enumerate(value):
        _check_part(part, f"{path}[{index}]", out, images=images)


def _check_part(part: Any, path: str, out: Problems, *, images: bool) -> None:
    if not isinstance(part, dict):
        out.add(path, f"must be a content part object, got {json_type(part)}")
        return
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            out.add(f"{path}.text", "must be a string" + got(part.get("text")))
    elif kind == "image_url" and images:
        image = part.get("image_url")
        if not (isinstance(image, dict) and isinstance(image.get("url"), str) and image["url"]):
            out.add(f"{path}.image_url.url", "must be a non-empty string")
    elif kind == "image_url":
        out.add(f"{path}.type", "'image_url' parts are only allowed in user messages")
    else:
        allowed = "'text' or 'image_url'" if images else "'text'"
        out.add(f"{path}.type", f"must be {allowed}" + got(kind))


def check_tool_calls(calls: Any, path: str, out: Problems, call_ids: set[str]) -> None:
    """Check an assistant's ``tool_calls`` and add their ids to ``call_ids``."""
    if not isinstance(calls, list) or not calls:
        out.add(path, "must be a non-empty array of tool calls" + got(calls))
        return
    for index, call in enumerate(calls):
        item = f"{path}[{index}]"
        if not isinstance(call, dict):
            out.add(item, f"must be an object, got {json_type(call)}")
            continue
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            call_ids.add(call_id)
        else:
            out.add(f"{item}.id", "must be a non-empty string" + got(call_id))
        if call.get("type") != "function":
            out.add(f"{item}.type", "must be 'function'" + got(call.get("type")))
        check_function_call(call.get("function"), f"{item}.function", out)


def check_function_call(call: Any, path: str, out: Problems) -> None:
    """Check ``{name, arguments}`` where ``arguments`` is a string holding a JSON object."""
    if not isinstance(call, dict):
        out.add(path, "must be an object with name and arguments" + got(call))
        return
    name = call.get("name")
    if not isinstance(name, str) or not name:
        out.add(f"{path}.name", "must be a non-empty string" + got(name))
    arguments = call.get("arguments")
    if not isinstance(arguments, str):
        out.add(f"{path}.arguments", "must be a string holding a JSON object" + got(arguments))
        return
    try:
        parsed = msgspec.json.decode(arguments)
    except msgspec.DecodeError as exc:
        out.add(f"{path}.arguments", f"is not valid JSON: {decode_reason(exc)}")
        return
    except RecursionError:
        out.add(f"{path}.arguments", "is not valid JSON: nested too deeply")
        return
    if not isinstance(parsed, dict):
        out.add(f"{path}.arguments", f"must hold a JSON object, got {json_type(parsed)}")


def check_tool_fields(obj: dict[str, Any], prefix: str, out: Problems) -> None:
    """Check ``tools``, ``functions`` and ``parallel_tool_calls`` of an example (or of a DPO ``input``)."""
    fields = present(obj)
    if "tools" in fields:
        _check_tools(fields["tools"], f"{prefix}tools", out)
    if "functions" in fields:
        _check_functions(fields["functions"], f"{prefix}functions", out)
    if "parallel_tool_calls" in fields and not isinstance(fields["parallel_tool_calls"], bool):
        out.add(f"{prefix}parallel_tool_calls", "must be a boolean" + got(fields["parallel_tool_calls"]))


def _check_tools(tools: Any, path: str, out: Problems) -> None:
    if not isinstance(tools, list):
        out.add(path, "must be an array of tools" + got(tools))
        return
    names: set[str] = set()
    for index, tool in enumerate(tools):
        item = f"{path}[{index}]"
        if not isinstance(tool, dict):
            out.add(item, f"must be an object, got {json_type(tool)}")
            continue
        if tool.get("type") != "function":
            out.add(f"{item}.type", "must be 'function'" + got(tool.get("type")))
        check_function_definition(tool.get("function"), f"{item}.function", out, names)


def _check_functions(functions: Any, path: str, out: Problems) -> None:
    if not isinstance(functions, list) or not 1 <= len(functions) <= MAX_FUNCTIONS:
        out.add(path, f"must be an array of 1 to {MAX_FUNCTIONS} function definitions")
        return
    names: set[str] = set()
    for index, function in enumerate(functions):
        check_function_definition(function, f"{path}[{index}]", out, names)


def check_function_definition(function: Any, path: str, out: Problems, names: set[str]) -> None:
    """Check ``{name, description?, parameters?, strict?}``; ``names`` holds the names seen so far."""
    if not isinstance(function, dict):
        out.add(path, "must be a function definition object" + got(function))
        return
    fields = present(function)
    for key in fields.keys() - FUNCTION_KEYS:
        out.add(
            f"{path}.{key[:200]}",
            "is not allowed; a function may hold only name, description, parameters, strict",
        )
    name = fields.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        out.add(f"{path}.name", "must be 1 to 64 characters from a-z, A-Z, 0-9, _ and -" + got(name))
    elif name in names:
        out.add(f"{path}.name", f"repeats the name of an earlier function{got(name)}")
    else:
        names.add(name)
    if "description" in fields and not isinstance(fields["description"], str):
        out.add(f"{path}.description", "must be a string" + got(fields["description"]))
    if "parameters" in fields and not isinstance(fields["parameters"], dict):
        out.add(f"{path}.parameters", "must be a JSON Schema object" + got(fields["parameters"]))
    if "strict" in fields and not isinstance(fields["strict"], bool):
        out.add(f"{path}.strict", "must be a boolean" + got(fields["strict"]))

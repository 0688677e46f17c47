"""Training-line format rules: each rule names the line and the field path it found wrong."""

from __future__ import annotations

from typing import Any

import pytest

from tunewright.training_files.formats import DataFormat, detect_format, validate_example


def chat(i: int = 0) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "ok"}
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
DPO_INPUT = {"messages": [USER]}
DPO_OUT = [{"role": "assistant", "content": "good"}]
DPO_BAD = [{"role": "assistant", "content": "bad"}]

LINE_RULES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("not a training example", {"text": "hi"}, ["is not a training example: expected messages (chat)"]),
    ("messages not a list", {"messages": {"role": "user"}}, ["messages must be a non-empty array"]),
    ("message not an object", {"messages": ["hi", ASSISTANT]}, ["messages[0] must be an object, got string"]),
    ("missing role", {"messages": [{"content": "x"}, ASSISTANT]}, ["messages[0].role is required"]),
    (
        "unknown message key",
        {"messages": [USER, {**ASSISTANT, "audio": {"id": "a"}}]},
        ["messages[1].audio is not allowed; a message may hold only role, content, name, tool_calls"],
    ),
    (
        "empty content",
        {"messages": [{"role": "user", "content": ""}, ASSISTANT]},
        ["messages[0].content must not be empty"],
    ),
    ("missing content", {"messages": [USER, {"role": "assistant"}]}, ["messages[1].content is required"]),
    (
        "content wrong type",
        {"messages": [{"role": "user", "content": 5}, ASSISTANT]},
        ["messages[0].content must be a string or an array of content parts, got number"],
    ),
    (
        "image in assistant message",
        {
            "messages": [
                USER,
                {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},
            ]
        },
        ["messages[1].content[0].type 'image_url' parts are only allowed in user messages"],
    ),
    (
        "unknown part type",
        {"messages": [{"role": "user", "content": [{"type": "audio"}]}, ASSISTANT]},
        ["messages[0].content[0].type must be 'text' or 'image_url' (got 'audio')"],
    ),
    (
        "text part without text",
        {"messages": [{"role": "user", "content": [{"type": "text"}]}, ASSISTANT]},
        ["messages[0].content[0].text must be a string (got null)"],
    ),
    (
        "weight true",
        {"messages": [USER, {**ASSISTANT, "weight": True}]},
        ["messages[1].weight must be 0 or 1 (got true)"],
    ),
    (
        "weight on user",
        {"messages": [{**USER, "weight": 1}, ASSISTANT]},
        ["messages[0].weight is only allowed on assistant messages"],
    ),
    (
        "all weights zero",
        {"messages": [USER, {**ASSISTANT, "weight": 0}]},
        ["messages has no assistant message with weight 1"],
    ),
    (
        "assistant target before any user",
        {"messages": [{"role": "system", "content": "s"}, ASSISTANT]},
        ["messages[1] is the first trained assistant message, but no user or tool message precedes it"],
    ),
    (
        "tool call without id and wrong type",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [{"type": "fn", "function": {"name": "f", "arguments": "{}"}}],
                },
            ]
        },
        [
            "messages[1].tool_calls[0].id must be a non-empty string (got null)",
            "messages[1].tool_calls[0].type must be 'function' (got 'fn')",
        ],
    ),
    (
        "arguments not an object",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}],
                },
            ]
        },
        ["messages[1].tool_calls[0].function.arguments must hold a JSON object, got array"],
    ),
    (
        "arguments not a string",
        {
            "messages": [
                USER,
                {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {}}}]},
            ]
        },
        ["messages[1].tool_calls[0].function.arguments must be a string holding a JSON object (got {})"],
    ),
    (
        "tool message without tool_call_id",
        {
            "messages": [
                USER,
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "content": "r"},
                ASSISTANT,
            ]
        },
        ["messages[2].tool_call_id is required on tool messages"],
    ),
    (
        "tool_call_id on user",
        {"messages": [{**USER, "tool_call_id": "c1"}, ASSISTANT]},
        ["messages[0].tool_call_id is only allowed on tool messages"],
    ),
    (
        "function message without name",
        {"messages": [USER, {"role": "function", "content": "r"}, ASSISTANT]},
        ["messages[1].name is required on function messages"],
    ),
    (
        "bad tool name",
        {**chat(), "tools": [{"type": "function", "function": {"name": "get weather"}}]},
        ["tools[0].function.name must be 1 to 64 characters from a-z, A-Z, 0-9, _ and - (got 'get weather')"],
    ),
    (
        "duplicate tool name and bad parameters",
        {
            **chat(),
            "tools": [
                {"type": "function", "function": {"name": "f"}},
                {"type": "function", "function": {"name": "f", "parameters": []}},
            ],
        },
        [
            "tools[1].function.name repeats the name of an earlier function (got 'f')",
            "tools[1].function.parameters must be a JSON Schema object (got [])",
        ],
    ),
    (
        "unknown function key",
        {**chat(), "tools": [{"type": "function", "function": {"name": "f", "returns": {}}}]},
        ["tools[0].function.returns is not allowed"],
    ),
    (
        "parallel_tool_calls not bool",
        {**chat(), "parallel_tool_calls": "yes"},
        ["parallel_tool_calls must be a boolean (got 'yes')"],
    ),
    (
        "empty functions",
        {**chat(), "functions": []},
        ["functions must be an array of 1 to 128 function definitions"],
    ),
    (
        "empty completion",
        {"prompt": "p", "completion": ""},
        ["completion must be a non-empty string (got '')"],
    ),
    ("prompt not a string", {"prompt": 1, "completion": "c"}, ["prompt must be a string (got 1)"]),
    (
        "dpo without input",
        {"preferred_output": DPO_OUT, "non_preferred_output": DPO_BAD},
        ["input must be an object holding messages (got null)"],
    ),
    (
        "dpo missing non-preferred",
        {"input": DPO_INPUT, "preferred_output": DPO_OUT},
        ["non_preferred_output is required"],
    ),
    (
        "dpo two outputs",
        {"input": DPO_INPUT, "preferred_output": DPO_OUT * 2, "non_preferred_output": DPO_BAD},
        ["preferred_output must be an array holding exactly one assistant message"],
    ),
    (
        "dpo both spellings",
        {
            "input": DPO_INPUT,
            "preferred_output": DPO_OUT,
            "preferred_completion": DPO_OUT,
            "non_preferred_output": DPO_BAD,
        },
        ["preferred_completion cannot be given together with preferred_output"],
    ),
    (
        "dpo output role and empty content",
        {
            "input": DPO_INPUT,
            "preferred_completion": [{"role": "user", "content": ""}],
            "non_preferred_completion": DPO_BAD,
        },
        [
            "preferred_completion[0].role must be 'assistant' (got 'user')",
            "preferred_completion[0].content must be a non-empty string (got '')",
        ],
    ),
    (
        "dpo identical outputs",
        {"input": DPO_INPUT, "preferred_output": DPO_OUT, "non_preferred_completion": DPO_OUT},
        ["non_preferred_completion[0].content must differ from the preferred output"],
    ),
]


@pytest.mark.parametrize(("obj", "expected"), [row[1:] for row in LINE_RULES], ids=[row[0] for row in LINE_RULES])
def test_line_rule_names_the_field(obj: dict[str, Any], expected: list[str]) -> None:
    problems = [str(problem) for problem in validate_example(obj, 7)]
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(f"line 7: {start}"), problem


@pytest.mark.parametrize(
    "obj",
    [
        {
            "messages": [
                USER,
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "c1", "content": "r"},
                ASSISTANT,
            ]
        },
        {
            "messages": [
                USER,
                {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                {"role": "function", "name": "f", "content": None},
                ASSISTANT,
            ]
        },
        {
            "messages": [
                USER,
                {**ASSISTANT, "name": None, "refusal": None, "tool_calls": None, "function_call": None},
            ]
        },
        {
            "messages": [
                {"role": "developer", "content": "d"},
                USER,
                USER,
                {**ASSISTANT, "weight": 0},
                {"role": "system", "content": "s"},
                ASSISTANT,
            ]
        },
        {
            "messages": [USER, ASSISTANT],
            "tools": [],
            "functions": [{"name": "f"}],
            "parallel_tool_calls": True,
            "id": 3,
        },
        {"prompt": "", "completion": "c"},
        {"input": {**DPO_INPUT, "tools": []}, "preferred_output": DPO_OUT, "non_preferred_output": DPO_BAD},
    ],
    ids=[
        "tool-round-trip",
        "function-call",
        "nulls-from-sdk-dumps",
        "roles-anywhere",
        "tool-fields",
        "empty-prompt",
        "dpo",
    ],
)
def test_valid_line_has_no_problems(obj: dict[str, Any]) -> None:
    assert validate_example(obj, 1) == []


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"messages": [], "prompt": "p"}, DataFormat.CHAT),
        ({"input": {}, "completion": "c"}, DataFormat.PREFERENCE),
        ({"preferred_completion": []}, DataFormat.PREFERENCE),
        ({"completion": "c"}, DataFormat.PROMPT_COMPLETION),
        ({"text": "t"}, None),
    ],
)
def test_format_is_detected_from_the_keys(obj: dict[str, Any], expected: DataFormat | None) -> None:
    assert detect_format(obj) == expected


def test_non_object_line_is_a_problem() -> None:
    assert [str(problem) for problem in validate_example([1], 2)] == ["line 2: expected a JSON object, got array"]

"""Dataset validation: JSONL framing while streaming, the format rules, and the error they raise."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tunewright.training_files.errors import DatasetError
from tunewright.training_files.validate import (
    DataFormat,
    JsonlChecker,
    JsonlSummary,
    validate_dataset,
    validate_example,
)

ASSETS = Path(__file__).parent.parent / "assets"


def check_stream(data: bytes, chunks: list[int] | None = None, **options: Any) -> JsonlSummary:
    """Feed ``data`` to a JsonlChecker, cut at the given offsets."""
    checker = JsonlChecker(**options)
    start = 0
    for end in [*(chunks or []), len(data)]:
        checker.feed(data[start:end])
        start = end
    return checker.finish()


def stream_error(data: bytes, chunks: list[int] | None = None, **options: Any) -> DatasetError:
    with pytest.raises(DatasetError) as caught:
        check_stream(data, chunks, **options)
    return caught.value


def chat(i: int = 0) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


# --- valid files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "method", "lines", "examples", "data_format"),
    [
        ("valid_chat.jsonl", "supervised", 12, 12, DataFormat.CHAT),
        ("valid_prompt_completion.jsonl", "supervised", 11, 11, DataFormat.PROMPT_COMPLETION),
        ("valid_dpo.jsonl", "dpo", 10, 10, DataFormat.PREFERENCE),
        ("bom_crlf.jsonl", "supervised", 13, 12, DataFormat.CHAT),
    ],
)
def test_valid_file_passes_both_checks(
    name: str, method: str, lines: int, examples: int, data_format: DataFormat
) -> None:
    data = (ASSETS / name).read_bytes()
    summary = check_stream(data, check_format=True, method=method)
    assert summary == JsonlSummary(lines=lines, examples=examples, format=data_format)
    with (ASSETS / name).open("rb") as file:
        report = validate_dataset(file, method=method)
    assert report.ok
    assert (report.examples, report.format, report.problems) == (examples, data_format, ())
    report.raise_if_invalid()


def test_valid_file_read_in_text_mode_passes() -> None:
    with (ASSETS / "bom_crlf.jsonl").open(encoding="utf-8") as file:
        report = validate_dataset(file)
    assert report.ok
    assert report.examples == 12


# --- one test per kind of bad file: exact line numbers and field paths ---------------------------------

BAD_FILES = [
    ("not_an_object.jsonl", "supervised", "training_file line 5: expected a JSON object, got array"),
    ("non_utf8.jsonl", "supervised", "training_file line 3: not valid UTF-8"),
    ("empty.jsonl", "supervised", "training_file contains no JSON lines"),
    (
        "bad_role.jsonl",
        "supervised",
        "training_file line 17: messages[2].role must be one of system, developer, user, assistant, tool, "
        "function (got 'bot')",
    ),
    (
        "missing_assistant.jsonl",
        "supervised",
        "training_file line 4: messages has no assistant message with weight 1 to train on",
    ),
    ("bad_weight.jsonl", "supervised", "training_file line 6: messages[2].weight must be 0 or 1 (got 2)"),
    (
        "bad_tool_call_arguments.jsonl",
        "supervised",
        "training_file line 3: messages[1].tool_calls[0].function.arguments is not valid JSON: unexpected end of data",
    ),
    (
        "unmatched_tool_call_id.jsonl",
        "supervised",
        "training_file line 8: messages[2].tool_call_id does not match the id of a tool call in an earlier "
        "assistant message (got 'call_9')",
    ),
    ("too_few_examples.jsonl", "supervised", "training_file has 3 examples; at least 10 are required"),
    (
        "mixed_formats.jsonl",
        "supervised",
        "training_file line 7: example is in prompt_completion format, but line 1 is in chat format; "
        "all lines must use one format",
    ),
    (
        "dpo_input_ends_with_assistant.jsonl",
        "dpo",
        "training_file line 5: input.messages[2] must not be an assistant message: the outputs are the "
        "assistant's reply",
    ),
    (
        "valid_chat.jsonl",
        "dpo",
        "training_file line 1: example is in chat format, but dpo jobs need preference examples",
    ),
    (
        "valid_dpo.jsonl",
        "supervised",
        "training_file line 1: example is in preference format, but supervised jobs need chat or "
        "prompt_completion examples",
    ),
]


@pytest.mark.parametrize(("name", "method", "message"), BAD_FILES, ids=[f"{n}-{m}" for n, m, _ in BAD_FILES])
def test_bad_file_is_rejected_naming_its_line_and_field(name: str, method: str, message: str) -> None:
    data = (ASSETS / name).read_bytes()
    error = stream_error(data, check_format=True, method=method)
    assert error.message == message
    assert error.to_error() == {"code": "invalid_training_file", "message": message, "param": "training_file"}
    with (ASSETS / name).open("rb") as file:
        report = validate_dataset(file, method=method)
    assert not report.ok
    assert "training_file " + "; ".join(str(problem) for problem in report.problems) == message


def test_bad_json_names_line_14_and_the_reason() -> None:
    data = (ASSETS / "bad_json_line14.jsonl").read_bytes()
    error = stream_error(data)
    assert error.message.startswith("training_file line 14: not valid JSON: trailing comma")
    assert error.details == (error.message.removeprefix("training_file "),)


@pytest.mark.parametrize("name", ["not_an_object.jsonl", "non_utf8.jsonl", "empty.jsonl", "bad_json_line14.jsonl"])
def test_framing_errors_raise_without_format_rules(name: str) -> None:
    data = (ASSETS / name).read_bytes()
    assert stream_error(data).message == stream_error(data, check_format=True).message


@pytest.mark.parametrize("name", ["bad_role.jsonl", "too_few_examples.jsonl", "mixed_formats.jsonl"])
def test_format_problems_pass_when_only_framing_is_checked(name: str) -> None:
    summary = check_stream((ASSETS / name).read_bytes())
    assert summary.format is None
    assert summary.examples > 0


def test_blank_lines_only_is_an_empty_file() -> None:
    assert stream_error(b"\n  \r\n\t\n").message == "training_file contains no JSON lines"


def test_first_framing_error_stops_the_check_and_keeps_earlier_problems() -> None:
    rows = jsonl([chat(i) for i in range(3)] + [{"messages": []}]) + b"[]\n" + b"{bad\n"
    error = stream_error(rows, check_format=True)
    assert error.details == (
        "line 4: messages must be a non-empty array of messages (got [])",
        "line 5: expected a JSON object, got array",
    )


def test_problems_are_capped_at_ten_and_raise_early() -> None:
    data = jsonl([{"messages": [{"role": "bot", "content": "x"}]}] * 30) + b"never reached\n"
    error = stream_error(data, check_format=True)
    assert len(error.details) == 10
    assert error.details[-1].startswith("line 10: messages[0].role must be one of")
    report = validate_dataset(data.splitlines())
    assert [str(problem) for problem in report.problems] == list(error.details)


def test_line_longer_than_the_limit_is_named_before_it_ends() -> None:
    checker = JsonlChecker(max_line_bytes=100)
    checker.feed(jsonl([chat()]))
    with pytest.raises(DatasetError) as caught:
        checker.feed(b'{"prompt": "' + b"x" * 200)
    assert caught.value.message == "training_file line 2: longer than 100 bytes"
    with pytest.raises(DatasetError):
        checker.feed(b'"}\n')


def test_validation_file_errors_carry_its_param_and_code() -> None:
    data = jsonl([chat()]) + b"42\n"
    error = stream_error(data, param="validation_file")
    assert error.to_error() == {
        "code": "invalid_validation_file",
        "message": "validation_file line 2: expected a JSON object, got number",
        "param": "validation_file",
    }


def test_validation_file_needs_one_example_and_training_file_ten() -> None:
    data = jsonl([chat()])
    assert check_stream(data, check_format=True, param="validation_file").examples == 1
    assert stream_error(data, check_format=True).message == ("training_file has 1 example; at least 10 are required")
    assert check_stream(data, check_format=True, min_examples=1).examples == 1


def test_echoed_values_are_cut_at_200_characters() -> None:
    problems = validate_example({"messages": [{"role": "r" * 500, "content": "x"}]}, 3)
    assert str(problems[0]) == (
        f"line 3: messages[0].role must be one of system, developer, user, assistant, tool, function "
        f"(got '{'r' * 200}…')"
    )


# --- chunking ----------------------------------------------------------------------------------------------

SMALL = (
    b"\xef\xbb\xbf"
    + jsonl(
        [
            {
                "messages": [
                    {"role": "user", "content": "caf\u00e9 \u732b"},
                    {"role": "assistant", "content": "\U0001f642"},
                ]
            }
        ]
    ).replace(b"\n", b"\r\n")
    + b"\n"
    + jsonl([chat(i) for i in range(9)])
)


@pytest.mark.parametrize(
    "data",
    [SMALL, SMALL + b'{"prompt": "\xff"}\n', SMALL[:-1] + b",\n", SMALL + b"[1]", SMALL[:40]],
    ids=["valid", "non-utf8", "bad-json", "not-object", "truncated"],
)
def test_streaming_result_does_not_depend_on_chunk_boundaries(data: bytes) -> None:
    def outcome(chunks: list[int]) -> object:
        try:
            return check_stream(data, chunks, check_format=True)
        except DatasetError as error:
            return error.message

    expected = outcome([])
    assert outcome(list(range(1, len(data)))) == expected
    for cut in range(len(data) + 1):
        assert outcome([cut]) == expected, cut
    for first in range(0, len(data), 7):
        assert outcome([first, min(first + 3, len(data))]) == expected


def test_split_inside_a_multibyte_character_still_decodes() -> None:
    data = SMALL
    cut = data.index("\u732b".encode()) + 1
    assert check_stream(data, [cut], check_format=True).examples == 10


def test_valid_asset_split_into_single_bytes() -> None:
    data = (ASSETS / "bom_crlf.jsonl").read_bytes()
    assert check_stream(data, list(range(1, len(data))), check_format=True).examples == 12


def test_validate_is_importable_without_torch() -> None:
    code = (
        "import sys, tunewright.training_files.validate; "
        "bad = {'torch', 'transformers', 'tokenizers'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _outcome(data: bytes, cuts: list[int]) -> object:
    from tunewright.training_files import validate

    checker = validate.JsonlChecker()
    try:
        start = 0
        for cut in [*cuts, len(data)]:
            checker.feed(data[start:cut])
            start = cut
        return checker.finish()
    except DatasetError as exc:
        return exc.message


def test_the_framing_verdict_does_not_depend_on_how_the_bytes_arrive() -> None:
    import random

    rng = random.Random(7)
    seeds = [p.read_bytes() for p in sorted(ASSETS.glob("*.jsonl"))]
    noise = [b"\n", b"\r\n", b" ", b"}", b"{", b'"', b"\xef\xbb\xbf", b"\xff", b"\\u", b"[1]", b"}{", b"\n\n", b"1e999"]
    for _ in range(400):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(0, 3)):
            at = rng.randint(0, len(data))
            if rng.random() < 0.5 and data:
                del data[at : at + rng.randint(1, 3)]
            else:
                data[at:at] = rng.choice(noise)
        raw = bytes(data)
        cuts = sorted(rng.sample(range(len(raw) + 1), k=min(len(raw) + 1, rng.randint(0, 6))))
        assert _outcome(raw, cuts) == _outcome(raw, []), raw[:200]


def _checked(data: bytes, **kwargs: Any) -> str | None:
    from tunewright.training_files.validate import JsonlChecker

    checker = JsonlChecker(**kwargs)
    try:
        checker.feed(data)
        checker.finish()
    except DatasetError as exc:
        return exc.message
    return None


def test_deeply_nested_json_is_a_line_located_error_not_a_crash() -> None:
    good = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    nested = b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    assert _checked(good * 3 + nested) == "training_file line 4: not valid JSON: nested too deeply"
    deep_args = json.dumps("[" * 5000 + "]" * 5000)
    call = (
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "c", '
        '"type": "function", "function": {"name": "f", "arguments": ' + deep_args + "}}]}]}\n"
    ).encode()
    message = _checked(good * 11 + call, check_format=True)
    assert message is not None
    assert "line 12" in message
    assert "nested too deeply" in message


def _nested_lines(depth: int) -> dict[str, bytes]:
    """Lines holding a value nested `depth` deep where the format rules echo it: `tools` and a `weight`."""
    arrays = b"[" * depth + b"]" * depth
    objects = b'{"a": ' * depth + b"1" + b"}" * depth
    turns = b'[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"'
    return {
        "tools": b'{"tools": ' + objects + b', "messages": ' + turns + b"}]}",
        "weight": b'{"messages": ' + turns + b', "weight": ' + arrays + b"}]}",
    }


def _verdicts_near_the_recursion_limit() -> set[str]:
    good = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    found = set()
    for depth in range(900, 1001):  # the decoder stops near the recursion limit; the rules then recurse further
        for line in _nested_lines(depth).values():
            message = _checked(good * 11 + line + b"\n", check_format=True)
            assert message is not None
            assert "line 12" in message
            found.add(message)
    return found


def test_values_nested_just_within_the_decoder_fail_the_format_rules_by_line_not_by_crash() -> None:
    assert "training_file line 12: not valid JSON: nested too deeply" in _verdicts_near_the_recursion_limit()
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(_verdicts_near_the_recursion_limit()))
    worker.start()  # the API checks files on worker threads, whose stacks start at another depth
    worker.join()
    assert results
    assert results[0]


@pytest.mark.parametrize(
    "number", [b"1e999", b"-1e999", b"1E+400", b"1.8e308", b"2e00000000308", b"1" * 400 + b".0", b"9" * 5000]
)
def test_a_number_too_large_for_a_float_is_refused_at_upload_as_at_job_creation(number: bytes) -> None:
    good = b'{"prompt": "a", "completion": "b"}\n'
    data = good * 11 + b'{"prompt": "a", "completion": "b", "n": ' + number + b"}\n" + good
    from tunewright.training_files.validate import JsonlChecker

    verdicts = set()
    for size in (7, 64, len(data)):  # the per-line path and the fast path over whole runs of lines
        checker = JsonlChecker()
        try:
            for start in range(0, len(data), size):
                checker.feed(data[start : start + size])
            checker.finish()
            verdicts.add(None)
        except DatasetError as exc:
            verdicts.add(exc.message)
    full = _checked(data, check_format=True)  # job creation decodes the values
    assert verdicts == {full}
    assert full is not None
    assert full.startswith("training_file line 12: not valid JSON: ")
    assert "out of range" in full


@pytest.mark.parametrize(
    "value",
    [
        b"1e308",
        b"-1.7976931348623157e308",
        b"1e-999",
        b"1" * 400,
        b'"e999 and 0e000 in text"',
        b'"' + b"7" * 400 + b'"',
    ],
)
def test_numbers_a_float_holds_and_look_alikes_in_strings_pass_both_checks(value: bytes) -> None:
    good = b'{"prompt": "a", "completion": "b"}\n'
    data = good * 11 + b'{"prompt": "a", "completion": "b", "n": ' + value + b"}\n"
    assert _checked(data) is None
    assert _checked(data, check_format=True) is None

"""Format-valid JSONL lines become token ids, loss masks and token counts; long examples are truncated."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tunewright.modeling.chat import render_chat
from tunewright.modeling.dataset import PreferenceExample, TokenizedExample, tokenize_dataset
from tunewright.training_files.errors import DatasetError

USER = {"role": "user", "content": "What is the capital of France?"}
ANSWER = {"role": "assistant", "content": "The capital of France is Paris."}
LONG_USER = {"role": "user", "content": "alpha beta gamma delta epsilon zeta eta theta " * 4}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def jsonl(*objs: object) -> list[bytes]:
    """One physical line per item; ``None`` gives a blank line."""
    return [b"\n" if obj is None else json.dumps(obj).encode() + b"\n" for obj in objs]


def targets(tokenizer: Any, example: TokenizedExample) -> str:
    return tokenizer.decode([t for t, bit in zip(example.ids, example.mask, strict=True) if bit])


def sft(tokenizer: Any, *objs: object, max_tokens: int = 512, param: Any = "training_file") -> Any:
    return tokenize_dataset(jsonl(*objs), tokenizer, param=param, method="supervised", max_tokens=max_tokens)


def test_chat_mask_covers_the_assistant_text_and_end_token(tokenizer: Any) -> None:
    data = sft(tokenizer, {"messages": [USER, ANSWER]})
    (example,) = data.examples
    assert example.line == 1
    assert targets(tokenizer, example) == "The capital of France is Paris.<|im_end|>"
    assert example.ids == render_chat(tokenizer, [USER, ANSWER]).ids


def test_weight_zero_turns_stay_in_context_but_are_not_targets(tokenizer: Any) -> None:
    skipped = {"role": "assistant", "content": "Lyon?", "weight": 0}
    again = {"role": "user", "content": "Sure?"}
    (example,) = sft(tokenizer, {"messages": [USER, skipped, again, ANSWER]}).examples
    assert targets(tokenizer, example) == "The capital of France is Paris.<|im_end|>"
    assert "Lyon?" in tokenizer.decode(example.ids)


def test_tools_reach_the_template_and_tool_calls_are_targets(tokenizer: Any) -> None:
    messages = [USER, {"role": "assistant", "tool_calls": [CALL]}]
    (example,) = sft(tokenizer, {"messages": messages, "tools": TOOLS}).examples
    assert "get_weather" in tokenizer.decode(example.ids[: example.mask.index(1)])  # the tools block
    assert targets(tokenizer, example) == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}' + (
        "</tool_call><|im_end|>"
    )


def test_prompt_completion_masks_only_the_completion_and_eos(tokenizer: Any) -> None:
    (example,) = sft(tokenizer, {"prompt": "Capital of France:", "completion": " Paris."}).examples
    prompt = tokenizer("Capital of France:", add_special_tokens=False)["input_ids"]
    assert example.ids[: len(prompt)] == prompt
    assert example.mask == [0] * len(prompt) + [1] * (len(example.ids) - len(prompt))
    assert example.ids[-1] == tokenizer.eos_token_id
    assert targets(tokenizer, example) == " Paris.<|im_end|>"


def test_long_examples_keep_their_first_tokens_and_are_recorded(tokenizer: Any) -> None:
    full = sft(tokenizer, {"messages": [USER, ANSWER]}).examples[0]
    limit = full.mask.index(1) + 3  # the prompt and three target tokens
    data = sft(tokenizer, {"messages": [USER, ANSWER]}, {"prompt": "Hi", "completion": " there."}, max_tokens=limit)
    cut = data.examples[0]
    assert (cut.ids, cut.mask) == (full.ids[:limit], full.mask[:limit])
    assert cut.target_tokens == 3
    assert data.truncated_lines == [1]
    assert data.max_length == limit


def test_an_example_with_every_target_cut_off_is_an_error_naming_its_line(tokenizer: Any) -> None:
    fits = {"messages": [USER, ANSWER]}
    too_long = {"messages": [LONG_USER, ANSWER]}
    limit = sft(tokenizer, fits).examples[0].length
    with pytest.raises(DatasetError) as caught:
        sft(tokenizer, fits, None, too_long, max_tokens=limit, param="validation_file")
    error = caught.value
    assert (error.param, error.code) == ("validation_file", "invalid_validation_file")
    assert error.details == (
        f"line 3: example is {sft(tokenizer, too_long).max_length} tokens long; the model's context is {limit} "
        "tokens and truncating it there would cut off every assistant token, leaving nothing to train on",
    )
    assert error.message.startswith("validation_file line 3: ")


def test_an_image_part_fails_its_line_rather_than_training_without_the_image(tokenizer: Any) -> None:
    picture = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    seen = {"role": "user", "content": [{"type": "text", "text": "What is this?"}, picture]}
    with pytest.raises(DatasetError) as caught:
        sft(tokenizer, {"messages": [USER, ANSWER]}, {"messages": [seen, ANSWER]})
    assert caught.value.details == (
        "line 2: messages[0].content[1] is a 'image_url' part; the base model reads text only",
    )


def test_text_parts_are_joined_and_refusal_parts_left_out(tokenizer: Any) -> None:
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}],
    }
    refusing = {
        "role": "assistant",
        "content": [{"type": "refusal", "refusal": "No."}, {"type": "text", "text": "Paris."}],
    }
    joined = sft(tokenizer, {"messages": [parts, refusing]}).examples[0]
    plain = sft(tokenizer, {"messages": [USER, {"role": "assistant", "content": "Paris."}]}).examples[0]
    assert joined.ids == plain.ids


def test_training_file_errors_use_the_training_code(tokenizer: Any) -> None:
    with pytest.raises(DatasetError) as caught:
        sft(tokenizer, {"prompt": "Capital of France:", "completion": " Paris."}, max_tokens=3)
    assert (caught.value.param, caught.value.code) == ("training_file", "invalid_training_file")
    assert caught.value.details[0].startswith("line 1: ")


def test_token_counts_add_up_and_billing_multiplies_by_epochs(tokenizer: Any) -> None:
    data = sft(tokenizer, {"messages": [USER, ANSWER]}, {"prompt": "Hi", "completion": " there."})
    assert data.total_tokens == sum(len(example.ids) for example in data.examples) == sum(data.lengths)
    assert data.target_tokens == sum(sum(example.mask) for example in data.examples)
    assert data.max_length == max(data.lengths)
    assert data.billed_tokens(3) == 3 * data.total_tokens


def test_blank_lines_and_bom_keep_line_numbers_right(tokenizer: Any) -> None:
    line = json.dumps({"messages": [USER, ANSWER]}).encode()
    lines = [b"\xef\xbb\xbf" + line + b"\r\n", b"\n", b"   \n", line]
    data = tokenize_dataset(lines, tokenizer, param="training_file", method="supervised", max_tokens=512)
    assert [example.line for example in data.examples] == [1, 4]
    assert data.examples[0] == TokenizedExample(data.examples[1].ids, data.examples[1].mask, 1)


def preference(prompt: list[dict[str, Any]], chosen: str, rejected: str, *, old_keys: bool = False) -> dict:
    keys = (
        ("preferred_completion", "non_preferred_completion")
        if old_keys
        else ("preferred_output", "non_preferred_output")
    )
    return {
        "input": {"messages": prompt},
        keys[0]: [{"role": "assistant", "content": chosen}],
        keys[1]: [{"role": "assistant", "content": rejected}],
    }


def dpo(tokenizer: Any, *objs: object, max_tokens: int = 512) -> Any:
    return tokenize_dataset(jsonl(*objs), tokenizer, param="training_file", method="dpo", max_tokens=max_tokens)


def test_dpo_prompt_ends_with_the_assistant_header_and_outputs_end_with_the_end_token(tokenizer: Any) -> None:
    data = dpo(tokenizer, None, preference([USER], "Paris.", "Lyon."))
    (example,) = data.examples
    assert isinstance(example, PreferenceExample)
    assert example.line == 2
    assert tokenizer.decode(example.prompt).endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.decode(example.chosen) == "Paris.<|im_end|>"
    assert tokenizer.decode(example.rejected) == "Lyon.<|im_end|>"
    assert (
        example.prompt + example.chosen
        == render_chat(tokenizer, [USER, {"role": "assistant", "content": "Paris."}]).ids[:-1]
    )


def test_dpo_earlier_assistant_turns_are_context_and_old_keys_work(tokenizer: Any) -> None:
    history = [USER, ANSWER, {"role": "user", "content": "And Italy?"}]
    (example,) = dpo(tokenizer, preference(history, "Rome.", "Milan.", old_keys=True)).examples
    assert "Paris." in tokenizer.decode(example.prompt)
    assert tokenizer.decode(example.chosen) == "Rome.<|im_end|>"
    assert tokenizer.decode(example.rejected) == "Milan.<|im_end|>"


def test_dpo_counts_and_truncation(tokenizer: Any) -> None:
    full = dpo(tokenizer, preference([USER], "The capital of France is Paris.", "Lyon.")).examples[0]
    assert full.total_tokens == len(full.prompt) + len(full.chosen) + len(full.rejected)
    assert full.length == len(full.prompt) + len(full.chosen)
    limit = len(full.prompt) + 2
    data = dpo(tokenizer, preference([USER], "The capital of France is Paris.", "Lyon."), max_tokens=limit)
    (cut,) = data.examples
    assert (cut.prompt, cut.chosen, cut.rejected) == (full.prompt, full.chosen[:2], full.rejected[:2])
    assert data.truncated_lines == [1]
    assert data.total_tokens == len(cut.prompt) + 4
    with pytest.raises(DatasetError, match="line 1: "):
        dpo(tokenizer, preference([USER], "Paris.", "Lyon."), max_tokens=len(full.prompt))


def test_a_line_in_the_wrong_format_for_the_method_is_refused(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="line 1: a dpo job cannot use a chat example"):
        dpo(tokenizer, {"messages": [USER, ANSWER]})


def test_deprecated_functions_render_as_tools_and_tool_calls(tokenizer: Any) -> None:
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    messages = [
        USER,
        {"role": "assistant", "content": None, "function_call": call},
        {"role": "function", "name": "get_weather", "content": '{"temp_c": 18}'},
        {"role": "assistant", "content": "18 degrees."},
    ]
    functions = [{"name": "get_weather", "parameters": {"type": "object"}}]
    (example,) = sft(tokenizer, {"messages": messages, "functions": functions}).examples
    text = tokenizer.decode(example.ids)
    assert '"name": "get_weather"' in text[: text.index("<|im_start|>user")]  # the tools block
    assert targets(tokenizer, example) == (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>18 degrees.<|im_end|>'
    )
    assert '<|im_start|>tool\n{"temp_c": 18}' in text

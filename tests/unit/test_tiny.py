"""The tiny offline model loads through the real transformers path, renders ChatML and is deterministic."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import pytest

from tunewright.modeling.tiny import make_tiny

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there, café 猫?"},
    {"role": "assistant", "content": "Hello! 🙂"},
]
CHATML = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nHi there, café 猫?<|im_end|>\n"
    "<|im_start|>assistant\nHello! 🙂<|im_end|>\n"
)


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the tiny model must not touch the network")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        yield make_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path) -> Any:
    from transformers import AutoTokenizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        return AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)


def test_model_loads_through_the_auto_classes(tiny_dir: Path, tokenizer: Any) -> None:
    from transformers import AutoModelForCausalLM

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    config = model.config
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (64, 2, 128)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.max_position_embeddings == 512
    assert config.tie_word_embeddings
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert config.vocab_size == len(tokenizer)
    assert 512 <= len(tokenizer) <= 1024
    assert tokenizer.eos_token == "<|im_end|>"
    assert config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.pad_token == "<|pad|>"
    assert config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.eos_token_id in model.generation_config.eos_token_id
    assert (tiny_dir / "model.safetensors").is_file()


def test_chat_template_renders_chatml_and_round_trips(tokenizer: Any) -> None:
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text == CHATML
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    for special in ("<|im_start|>", "<|im_end|>"):
        assert ids.count(tokenizer.convert_tokens_to_ids(special)) == 3
    prompt = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == CHATML.rsplit("Hello!", 1)[0]


def test_chat_template_renders_tools_and_tool_calls(tokenizer: Any) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        *CHAT[:2],
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 18}'},
    ]
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert '{"type": "function", "function": {"name": "get_weather"' in text
    assert text.count("<|im_start|>system") == 1
    assert (
        '<|im_start|>assistant\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
        "</tool_call><|im_end|>\n<|im_start|>tool\n"
    ) in text
    assert text.endswith("<|im_start|>assistant\n")


def test_forward_pass_gives_logits_over_the_vocabulary(tiny_dir: Path, tokenizer: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    ids = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_same_seed_gives_identical_files_and_another_seed_other_weights(tiny_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    again = make_tiny(tmp_path / "again", seed=0)
    for path in tiny_dir.iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name
    other = load_file(make_tiny(tmp_path / "other", seed=1) / "model.safetensors")
    first = load_file(tiny_dir / "model.safetensors")
    assert other.keys() == first.keys()
    assert any(not other[name].equal(first[name]) for name in first)


def test_building_leaves_the_callers_torch_rng_alone(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tiny(tmp_path / "model", seed=5)
    assert torch.rand(3).equal(expected)

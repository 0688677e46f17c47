"""Base models resolve to local directories, load offline, and chats render to ids with an assistant-only mask."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest
from fixtures.models import SMOLLM2, fake_gguf_package

from tunewright.modeling import registry
from tunewright.modeling.chat import ChatTemplateError, render_chat
from tunewright.modeling.loading import load_model, load_tokenizer
from tunewright.modeling.registry import (
    ModelUnavailableError,
    UnknownModelError,
    import_packaged_models_in_background,
    packaged_model_pending,
    resolve_model_dir,
)
from tunewright.storage.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Hi there?"}
ANSWER = {"role": "assistant", "content": "Hello! 🙂"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def masked_runs(tokenizer: Any, ids: list[int], mask: list[int]) -> list[str]:
    """Decode each maximal run of masked tokens."""
    runs: list[list[int]] = []
    for i, (token, bit) in enumerate(zip(ids, mask, strict=True)):
        if bit and (i == 0 or not mask[i - 1]):
            runs.append([])
        if bit:
            runs[-1].append(token)
    return [tokenizer.decode(run) for run in runs]


def settings_for(tmp_path: Path, **models: str) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), base_models=models)


def test_mask_covers_exactly_the_assistant_content_and_end_token(tokenizer: Any) -> None:
    chat = render_chat(tokenizer, [SYSTEM, USER, ANSWER])
    assert len(chat.ids) == len(chat.mask)
    assert set(chat.mask) == {0, 1}
    assert masked_runs(tokenizer, chat.ids, chat.mask) == ["Hello! 🙂<|im_end|>"]
    unmasked = tokenizer.decode([t for t, bit in zip(chat.ids, chat.mask, strict=True) if not bit])
    assert unmasked == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there?<|im_end|>\n" + (
        "<|im_start|>assistant\n\n"
    )


def test_ids_are_what_the_chat_template_tokenizes_to(tokenizer: Any) -> None:
    messages = [SYSTEM, USER, ANSWER]
    expected = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert render_chat(tokenizer, messages).ids == list(expected)


def test_multi_turn_chat_masks_every_assistant_turn(tokenizer: Any) -> None:
    messages = [USER, ANSWER, {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Paris."}]
    chat = render_chat(tokenizer, messages)
    assert masked_runs(tokenizer, chat.ids, chat.mask) == ["Hello! 🙂<|im_end|>", "Paris.<|im_end|>"]


def test_weight_zero_assistant_turns_are_masked_out(tokenizer: Any) -> None:
    skipped = {**ANSWER, "weight": 0}
    trained = {"role": "assistant", "content": "Paris.", "weight": 1}
    messages = [SYSTEM, USER, skipped, {"role": "user", "content": "Again?"}, trained]
    chat = render_chat(tokenizer, messages)
    assert masked_runs(tokenizer, chat.ids, chat.mask) == ["Paris.<|im_end|>"]
    assert "Hello! 🙂" in tokenizer.decode(chat.ids)  # still in the context, just not trained


def test_text_part_arrays_render_like_the_joined_string(tokenizer: Any) -> None:
    parts = [{"type": "text", "text": "Hello! "}, {"type": "text", "text": "🙂"}]
    user = {"role": "user", "content": [{"type": "text", "text": "Hi there?"}]}
    as_parts = render_chat(tokenizer, [SYSTEM, user, {"role": "assistant", "content": parts}])
    assert as_parts == render_chat(tokenizer, [SYSTEM, USER, ANSWER])


def test_tool_calls_are_trained_and_tool_results_are_not(tokenizer: Any) -> None:
    messages = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 18}'},
        {"role": "assistant", "content": "18 degrees."},
    ]
    chat = render_chat(tokenizer, messages, tools=TOOLS)
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>'
    assert masked_runs(tokenizer, chat.ids, chat.mask) == [call, "18 degrees.<|im_end|>"]
    assert "# Tools" in tokenizer.decode(chat.ids)


def test_generation_prompt_ends_the_ids_unmasked(tokenizer: Any) -> None:
    chat = render_chat(tokenizer, [SYSTEM, USER], add_generation_prompt=True)
    assert tokenizer.decode(chat.ids).endswith("<|im_start|>assistant\n")
    assert not any(chat.mask)


def test_transformers_assistant_mask_is_all_zero_on_this_template(tokenizer: Any) -> None:
    # Why render_chat builds its own mask: the template has no {% generation %} block
    # (docs/architecture.md "One renderer").
    out = tokenizer.apply_chat_template(
        [SYSTEM, USER, ANSWER], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert len(out["assistant_masks"]) == len(out["input_ids"]) > 0
    assert not any(out["assistant_masks"])
    assert any(render_chat(tokenizer, [SYSTEM, USER, ANSWER]).mask)


def test_template_that_is_not_prefix_stable_is_refused(tiny_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_dir)
    tokenizer.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ChatTemplateError, match=r"not prefix-stable at messages\[1\]"):
        render_chat(tokenizer, [USER, ANSWER])


def test_local_directory_resolves_to_itself(tiny_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, tiny=str(tiny_dir))
    assert resolve_model_dir("tiny", settings) == tiny_dir.resolve()


def test_unknown_model_id_is_a_key_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(KeyError) as caught:
        resolve_model_dir("gpt-17", settings_for(tmp_path, tiny="/nowhere"))
    assert isinstance(caught.value, UnknownModelError)
    assert str(caught.value) == "unknown base model 'gpt-17' (configured: smollm2-135m-instruct, tiny)"


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("./no/such/dir", r"'m': directory \./no/such/dir does not exist"),
        ("tunewright-tests/never-cached", r"'m': Hugging Face repo 'tunewright-tests/never-cached' is not in the"),
        ("pkg:tunewright_no_such_package", r"'m': package 'tunewright_no_such_package' is not installed"),
    ],
)
def test_missing_model_files_are_named_and_never_downloaded(tmp_path: Path, source: str, match: str) -> None:
    with pytest.raises(ModelUnavailableError, match=match):
        resolve_model_dir("m", settings_for(tmp_path, m=source))


def test_availability_is_checked_without_importing_anything(tiny_dir: Path, tmp_path: Path, fake_package: list) -> None:
    settings = settings_for(
        tmp_path,
        tiny=str(tiny_dir),
        gone="./no/such/dir",
        hub="tunewright-tests/never-cached",
        small="pkg:tw_fake_gguf",
    )
    assert registry.model_available("tiny", settings)
    assert registry.model_available("small", settings)
    assert fake_package == []  # the packaged model is found, not imported
    for model in ("gone", "hub", "unknown"):
        assert not registry.model_available(model, settings)
    missing = settings_for(tmp_path, small="pkg:tunewright_no_such_package")
    assert not registry.model_available("small", missing)


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """A package `tw_fake_gguf` holding one .gguf file, and a converter that records its calls."""
    fake_gguf_package(tmp_path / "site", monkeypatch)
    calls: list[Path] = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        threading.Event().wait(0.2)  # long enough for the other importer to reach the lock
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(registry, "_convert_gguf", convert)
    return calls


def test_packaged_model_is_imported_once_even_when_two_resolve_at_once(tmp_path: Path, fake_package: list) -> None:
    settings = settings_for(tmp_path, small="pkg:tw_fake_gguf")
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model_dir("small", settings))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    target = settings.data_path / "models" / "small"
    assert results == [target, target]
    assert [path.name for path in fake_package] == ["weights.gguf"]
    assert (target / "config.json").is_file()
    assert resolve_model_dir("small", settings) == target
    assert len(fake_package) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["small", "small.lock"]  # no staging dir left


def test_failed_import_leaves_nothing_behind(
    tmp_path: Path, fake_package: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(gguf: Path, out: Path) -> None:
        raise RuntimeError("corrupt file")

    monkeypatch.setattr(registry, "_convert_gguf", broken)
    settings = settings_for(tmp_path, small="pkg:tw_fake_gguf")
    with pytest.raises(RuntimeError, match="corrupt file"):
        resolve_model_dir("small", settings)
    assert [p.name for p in (settings.data_path / "models").iterdir()] == ["small.lock"]


def test_the_background_import_imports_once_for_every_importer(
    tmp_path: Path, tiny_dir: Path, fake_package: list
) -> None:
    settings = settings_for(tmp_path, small="pkg:tw_fake_gguf", tiny=str(tiny_dir))
    assert packaged_model_pending("small", settings)
    assert not packaged_model_pending("tiny", settings)  # a directory is ready as it is
    importers = [import_packaged_models_in_background(settings) for _ in "ab"]  # two workers starting at once
    for importer in importers:
        if importer is not None:  # the second may find the model imported already
            importer.join()
    assert [path.name for path in fake_package].count("weights.gguf") == 1  # (the default SmolLM2 is imported too)
    assert not packaged_model_pending("small", settings)
    assert import_packaged_models_in_background(settings) is None, "nothing left to import"


def test_an_interrupted_imports_staging_directory_is_removed(tmp_path: Path, fake_package: list) -> None:
    settings = settings_for(tmp_path, small="pkg:tw_fake_gguf")
    leftover = settings.data_path / "models" / ".small-k1ll3d"  # a worker stopped mid-import
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")
    resolve_model_dir("small", settings)
    assert sorted(p.name for p in leftover.parent.iterdir()) == ["small", "small.lock"]


def test_a_background_import_that_cannot_run_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Both packages missing: nothing is imported, not even the default SmolLM2.
    settings = settings_for(tmp_path, **{"small": "pkg:tunewright_no_such_package", SMOLLM2: "pkg:tw_missing"})
    importer = import_packaged_models_in_background(settings)
    assert importer is not None
    importer.join()
    assert "base model small cannot be prepared: " in caplog.text
    assert "is not installed" in caplog.text


def test_loaded_model_runs_a_forward_pass(tiny_dir: Path, tokenizer: Any) -> None:
    import torch

    model = load_model(tiny_dir, dtype="float32", device="cpu")
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    chat = render_chat(tokenizer, [SYSTEM, USER, ANSWER])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([chat.ids])).logits
    assert logits.shape == (1, len(chat.ids), len(tokenizer))
    assert torch.isfinite(logits).all()

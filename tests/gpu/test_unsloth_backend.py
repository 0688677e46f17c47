"""The Unsloth backend and bf16 / 4-bit training on a CUDA device (skipped cleanly without one).

Run on a CUDA host with the `gpu` extra installed as README.md "Licences" says (`--no-deps`):
`pytest -m gpu tests/gpu`. Each test compares against the PEFT backend on the same model and data.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import pytest

from tunewright.modeling.chat import render_chat
from tunewright.modeling.hyperparams import ResolvedHyperparameters
from tunewright.trainer.backends.peft import PeftTrainingBackend
from tunewright.trainer.collate import collate_examples, pad_id_of
from tunewright.trainer.loop import train

if TYPE_CHECKING:
    from pathlib import Path

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def needs_unsloth() -> None:
    if importlib.util.find_spec("unsloth") is None:
        pytest.skip("unsloth is not installed (the gpu extra)")


def hyper() -> ResolvedHyperparameters:
    return ResolvedHyperparameters(
        method_type="supervised",
        n_epochs=1,
        batch_size=4,
        learning_rate_multiplier=1.0,
        learning_rate=2e-3,
        lora_rank=8,
        lora_alpha=16.0,
        lora_dropout=0.0,
    )


def batches(tokenizer: Any, steps: int) -> list[Any]:
    from tunewright.modeling.dataset import TokenizedExample

    examples = []
    for i, word in enumerate(WORDS):
        chat = render_chat(
            tokenizer,
            [{"role": "user", "content": word}, {"role": "assistant", "content": WORDS[(i + 1) % len(WORDS)]}],
        )
        examples.append(TokenizedExample(ids=chat.ids, mask=chat.mask, line=i + 1))
    batch = collate_examples(examples, pad_id_of(tokenizer))
    return [batch] * steps


def losses(backend: Any, model_dir: Path, steps: int = 30) -> list[float]:
    model, tokenizer = backend.load(model_dir, hyper(), seed=0, device="cuda")
    result = train(model, batches(tokenizer, steps), hyper=hyper(), total_steps=steps, seed=0)
    return [m.train_loss for m in result.history]


def test_peft_backend_trains_in_bf16_on_cuda(tiny_dir: Path) -> None:
    curve = losses(PeftTrainingBackend(), tiny_dir)
    assert curve[-1] < curve[0] * 0.5


def test_unsloth_backend_is_selected_and_learns_like_peft(tiny_dir: Path) -> None:
    needs_unsloth()
    from tunewright.trainer.backends import select_backend

    backend = select_backend()
    assert backend.name == "unsloth"
    unsloth_curve = losses(backend, tiny_dir)
    peft_curve = losses(PeftTrainingBackend(), tiny_dir)
    assert unsloth_curve[-1] < unsloth_curve[0] * 0.5
    assert unsloth_curve[0] == pytest.approx(peft_curve[0], rel=0.05)


def test_unsloth_saves_a_standard_peft_adapter(tiny_dir: Path, tmp_path: Path) -> None:
    needs_unsloth()
    from tunewright.trainer.backends.unsloth import UnslothTrainingBackend

    backend = UnslothTrainingBackend()
    model, _ = backend.load(tiny_dir, hyper(), seed=0, device="cuda")
    backend.save_adapter(model, tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}


def test_unsloth_4bit_qlora_trains(tiny_dir: Path) -> None:
    needs_unsloth()
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    from tunewright.trainer.backends.unsloth import UnslothTrainingBackend

    curve = losses(UnslothTrainingBackend(load_in_4bit=True), tiny_dir)
    assert curve[-1] < curve[0]

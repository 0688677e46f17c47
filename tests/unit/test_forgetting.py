"""The forgetting check's probe set and figures, on the tiny model: rendered as training renders, scored as loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from tunewright.modeling.dataset import tokenize_dataset
from tunewright.modeling.hyperparams import ResolvedHyperparameters
from tunewright.trainer.backends.peft import PeftTrainingBackend
from tunewright.trainer.collate import pad_id_of
from tunewright.trainer.evaluate import evaluate
from tunewright.trainer.forgetting import base_probe_loss, build_probe, forgetting_warning, probe_lines, probe_loss
from tunewright.training_files.validate import validate_dataset

if TYPE_CHECKING:
    from pathlib import Path

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def probe(tokenizer: Any, examples: int = 64, context: int = 512, budget: int = 8192) -> Any:
    return build_probe(
        tokenizer, examples=examples, context_tokens=context, micro_batch_tokens=budget, pad_id=pad_id_of(tokenizer)
    )


def rows(batches: list[Any]) -> list[tuple[list[int], list[int]]]:
    """Each micro-batch row as (ids, mask), padding cut off, sorted (batching orders rows by length)."""
    out = []
    for batch in batches:
        for ids, mask, attention in zip(batch.input_ids, batch.mask, batch.attention_mask, strict=True):
            width = int(attention.sum())
            out.append((ids[:width].tolist(), mask[:width].tolist()))
    return sorted(out)


def test_the_probe_set_is_a_few_hundred_valid_chat_conversations_without_system_messages() -> None:
    lines = probe_lines()
    assert len(lines) == 256
    validate_dataset(lines, param="training_file", method="supervised").raise_if_invalid()
    for line in lines:
        roles = [message["role"] for message in msgspec.json.decode(line)["messages"]]
        assert roles == ["user", "assistant"], line


def test_the_probe_is_rendered_exactly_as_a_training_file_and_batched_under_the_budget(tokenizer: Any) -> None:
    built = probe(tokenizer, examples=40, budget=512)
    expected = tokenize_dataset(
        probe_lines()[:40], tokenizer, param="training_file", method="supervised", max_tokens=512
    )
    assert (built.examples, built.used) == (40, 40)
    assert rows(built.batches) == sorted((example.ids, example.mask) for example in expected.examples)
    assert len(built.batches) > 1
    assert all(batch.input_ids.numel() <= 512 for batch in built.batches)


def test_conversations_longer_than_the_context_are_left_out(tokenizer: Any) -> None:
    lengths = [example.length for example in _examples(tokenizer)]
    context = sorted(lengths)[len(lengths) // 2]
    built = probe(tokenizer, context=context)
    assert built.used == sum(1 for length in lengths if length <= context)
    assert 0 < built.used < 64
    assert all(batch.input_ids.shape[1] <= context for batch in built.batches)
    assert probe(tokenizer, examples=10_000).used == 256


def _examples(tokenizer: Any) -> list[Any]:
    return tokenize_dataset(
        probe_lines()[:64], tokenizer, param="training_file", method="supervised", max_tokens=512
    ).examples


def load(tiny_dir: Path) -> Any:
    hyper = ResolvedHyperparameters(
        method_type="supervised", n_epochs=1, batch_size=2, learning_rate_multiplier=1.0, learning_rate=1e-2
    )
    return PeftTrainingBackend().load(tiny_dir, hyper, seed=0, device="cpu")[0]


def test_the_base_figure_is_the_model_without_its_adapter(tiny_dir: Path, tokenizer: Any) -> None:
    from tunewright.modeling.loading import load_model

    built = probe(tokenizer)
    model = load(tiny_dir)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(1.0)  # an adapter that changes the outputs
    model.train()
    tuned = probe_loss(model, built)
    base = base_probe_loss(model, built)
    plain = evaluate(load_model(tiny_dir), built.batches).loss
    assert base == pytest.approx(plain, rel=1e-5)
    assert tuned != pytest.approx(base, abs=1e-3)
    assert probe_loss(model, built) == tuned  # the adapter is enabled again
    assert model.training  # the mode is given back
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize(
    ("loss", "threshold", "warned"),
    [
        (2.0, 0.1, False),
        (2.2, 0.1, False),
        (2.21, 0.1, True),
        (2.0, 0.0, False),
        (2.0001, 0.0, True),
        (1.0, 0.0, False),
    ],
)
def test_a_warning_only_above_the_relative_threshold(loss: float, threshold: float, warned: bool) -> None:
    message = forgetting_warning(step=30, loss=loss, base=2.0, threshold=threshold)
    assert (message is not None) == warned
    if warned:
        assert message is not None
        assert message.startswith(f"Forgetting check: at step 30 the loss on the general probe set is {loss:.4f}")
        assert f"(threshold {threshold * 100:g}%)" in message

"""Validation on the tiny model: the training loss's normalization, no gradients, mode and RNG left as they were."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pytest

from tunewright.modeling.dataset import tokenize_dataset
from tunewright.modeling.hyperparams import ResolvedHyperparameters
from tunewright.trainer.backends.peft import PeftTrainingBackend
from tunewright.trainer.collate import collate_examples, collate_preferences, pad_id_of
from tunewright.trainer.dpo import DpoObjective
from tunewright.trainer.evaluate import EvalMetrics, evaluate, sample_batches
from tunewright.trainer.loop import Batch, token_loss

if TYPE_CHECKING:
    from pathlib import Path

torch = pytest.importorskip("torch")

WORDS = ["alpha", "beta", "gamma", "delta"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load(tiny_dir: Path, *, lora_dropout: float = 0.0) -> Any:
    hyper = ResolvedHyperparameters(
        method_type="supervised",
        n_epochs=1,
        batch_size=2,
        learning_rate_multiplier=1.0,
        learning_rate=1e-2,
        lora_rank=8,
        lora_alpha=16.0,
        lora_dropout=lora_dropout,
    )
    return PeftTrainingBackend().load(tiny_dir, hyper, seed=0, device="cpu")[0]


def tokenize(tokenizer: Any, objs: list[dict[str, Any]], method: str) -> list[Any]:
    lines = [json.dumps(obj).encode() for obj in objs]
    return tokenize_dataset(lines, tokenizer, param="validation_file", method=method, max_tokens=512).examples


def mapping_batches(tokenizer: Any, count: int) -> list[Batch]:
    """Batches of two chats each, a word answered by the next word."""
    chats = [
        {"messages": [{"role": "user", "content": word}, {"role": "assistant", "content": WORDS[(i + 1) % 4]}]}
        for i, word in enumerate(WORDS)
    ]
    examples = tokenize(tokenizer, chats, "supervised")
    pad = pad_id_of(tokenizer)
    return [collate_examples([examples[(2 * b) % 4], examples[(2 * b + 1) % 4]], pad) for b in range(count)]


def preference_batches(tokenizer: Any) -> list[Any]:
    """Two batches of two pairs: a word prefers the next word to the one before it."""
    pairs = [
        {
            "input": {"messages": [{"role": "user", "content": word}]},
            "preferred_output": [{"role": "assistant", "content": WORDS[(i + 1) % 4]}],
            "non_preferred_output": [{"role": "assistant", "content": WORDS[i - 1]}],
        }
        for i, word in enumerate(WORDS)
    ]
    examples = tokenize(tokenizer, pairs, "dpo")
    pad = pad_id_of(tokenizer)
    return [collate_preferences(examples[i : i + 2], pad) for i in (0, 2)]


def test_evaluate_on_one_batch_equals_its_token_loss(tiny_dir: Path, tokenizer: Any) -> None:
    model = load(tiny_dir)
    batch = mapping_batches(tokenizer, 1)[0]
    metrics = evaluate(model, [batch])
    with torch.no_grad():
        loss_sum, hits = token_loss(model.eval(), batch)
    targets = int(batch.mask[:, 1:].sum())
    assert metrics.targets == targets
    assert metrics.loss == pytest.approx(float(loss_sum) / targets, rel=1e-6)
    assert metrics.mean_token_accuracy == pytest.approx(hits / targets)
    assert metrics.extra == {}


def test_several_batches_are_normalized_by_all_their_target_tokens(tiny_dir: Path, tokenizer: Any) -> None:
    model = load(tiny_dir)
    first, second = mapping_batches(tokenizer, 2)
    each = [evaluate(model, [batch]) for batch in (first, second)]
    both = evaluate(model, iter([first, second]))
    assert both.targets == each[0].targets + each[1].targets
    weighted = sum(m.loss * m.targets for m in each) / both.targets
    assert both.loss == pytest.approx(weighted, rel=1e-6)


def test_mode_is_restored_and_no_gradient_is_left(tiny_dir: Path, tokenizer: Any) -> None:
    model = load(tiny_dir)
    batches = mapping_batches(tokenizer, 2)
    assert model.training
    evaluate(model, batches)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    evaluate(model, batches)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def test_dropout_is_off_and_the_rng_is_untouched(tiny_dir: Path, tokenizer: Any) -> None:
    model = load(tiny_dir, lora_dropout=0.5)
    batches = mapping_batches(tokenizer, 2)
    before = torch.get_rng_state()
    first = evaluate(model, batches)
    assert torch.equal(torch.get_rng_state(), before)  # a validation mid-run leaves the training curve alone
    assert evaluate(model, batches) == first


def test_dpo_validation_is_per_pair_and_log_2_on_a_fresh_adapter(tiny_dir: Path, tokenizer: Any) -> None:
    model = load(tiny_dir)
    batches = preference_batches(tokenizer)
    metrics = evaluate(model, batches, DpoObjective(0.1))
    assert metrics.targets == sum(int(b.chosen.input_ids.shape[0]) for b in batches)
    assert metrics.loss == pytest.approx(math.log(2), abs=1e-6)
    assert metrics.mean_token_accuracy == 0.0
    assert set(metrics.extra) == {"reward_margin", "chosen_reward", "rejected_reward"}


def test_no_batches_give_zeros(tiny_dir: Path) -> None:
    assert evaluate(load(tiny_dir), []) == EvalMetrics(loss=0.0, mean_token_accuracy=0.0, targets=0)


def test_the_sample_is_fixed_by_the_seed_and_keeps_the_order() -> None:
    batches = list(range(20))
    sample = sample_batches(batches, 5, seed=3)
    assert sample == sample_batches(batches, 5, seed=3)
    assert len(sample) == 5
    assert sample == sorted(sample)
    assert len(set(sample)) == 5
    assert any(sample_batches(batches, 5, seed=s) != sample for s in range(4, 8))
    assert sample_batches(batches, 50, seed=3) == batches
    assert sample_batches(batches, 0, seed=3) == []
    with pytest.raises(ValueError, match="negative"):
        sample_batches(batches, -1, seed=3)

"""DPO on the tiny model: log 2 at step 0, a growing reward margin, and a reference that really is the base model.

Every comparison is between two runs or two computations inside one test: no golden numbers (docs/architecture.md
"Tests and benchmarks").
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pytest

from tunewright.modeling.dataset import tokenize_dataset
from tunewright.modeling.hyperparams import ResolvedHyperparameters
from tunewright.modeling.loading import load_model
from tunewright.trainer.backends.peft import PeftTrainingBackend
from tunewright.trainer.collate import PreferenceBatch, collate_preferences, pad_id_of
from tunewright.trainer.dpo import DpoObjective, objective_for, reference, sequence_logprobs, stack_pair
from tunewright.trainer.loop import Batch, SupervisedObjective, train

if TYPE_CHECKING:
    from pathlib import Path

torch = pytest.importorskip("torch")

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
BETA = 0.1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_hyper(*, lora_dropout: float = 0.0) -> ResolvedHyperparameters:
    return ResolvedHyperparameters(
        method_type="dpo",
        n_epochs=1,
        batch_size=2,
        learning_rate_multiplier=1.0,
        learning_rate=1e-2,
        beta=BETA,
        lora_rank=8,
        lora_alpha=16.0,
        lora_dropout=lora_dropout,
    )


def pair_line(question: str, chosen: str, rejected: str) -> bytes:
    return json.dumps(
        {
            "input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": chosen}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}],
        }
    ).encode()


def preference_batches(tokenizer: Any, *, per_batch: int = 2) -> list[PreferenceBatch]:
    """Each word prefers the next word over the previous one (answers of different lengths included)."""
    lines = [
        pair_line(word, WORDS[(i + 1) % len(WORDS)], WORDS[i - 1] + (" " + WORDS[i - 2]) * (i % 2))
        for i, word in enumerate(WORDS)
    ]
    data = tokenize_dataset(lines, tokenizer, param="training_file", method="dpo", max_tokens=512)
    pad = pad_id_of(tokenizer)
    examples = data.examples
    return [collate_preferences(examples[i : i + per_batch], pad) for i in range(0, len(examples), per_batch)]


def load(tiny_dir: Path, *, seed: int = 0, **options: Any) -> Any:
    return PeftTrainingBackend().load(tiny_dir, make_hyper(**options), seed=seed, device="cpu")[0]


def run(tiny_dir: Path, batches: list[Any], *, steps: int, seed: int = 0, **options: Any) -> tuple[Any, list[Any]]:
    model = load(tiny_dir, seed=seed)
    hyper = make_hyper()
    result = train(model, batches, hyper=hyper, total_steps=steps, seed=seed, objective=DpoObjective(BETA), **options)
    return model, result.history


def test_the_first_step_loss_is_log_2_because_the_fresh_adapter_is_the_reference(
    tiny_dir: Path, tokenizer: Any
) -> None:
    first = run(tiny_dir, preference_batches(tokenizer), steps=1)[1][0]
    assert first.target_tokens == 2  # pairs
    assert first.train_loss == pytest.approx(math.log(2), abs=1e-6)
    assert first.train_mean_token_accuracy == 0.0  # a margin of exactly 0 is not a win
    assert first.extra == pytest.approx({"reward_margin": 0.0, "chosen_reward": 0.0, "rejected_reward": 0.0})


def test_training_raises_the_reward_margin_and_the_pairs_won(tiny_dir: Path, tokenizer: Any) -> None:
    batches = preference_batches(tokenizer) * 10  # 3 batches of 2 pairs, 10 epochs
    history = run(tiny_dir, batches, steps=30)[1]
    assert len(history) == 30
    early, late = history[:3], history[-3:]  # one epoch each
    mean = lambda rows, key: sum(key(m) for m in rows) / len(rows)  # noqa: E731
    assert mean(late, lambda m: m.extra["reward_margin"]) > mean(early, lambda m: m.extra["reward_margin"]) + 0.1
    assert mean(late, lambda m: m.train_mean_token_accuracy) > mean(early, lambda m: m.train_mean_token_accuracy)
    assert mean(late, lambda m: m.train_loss) < mean(early, lambda m: m.train_loss)
    for m in history:
        margin = m.extra["chosen_reward"] - m.extra["rejected_reward"]
        assert m.extra["reward_margin"] == pytest.approx(margin, abs=1e-6)


def test_the_reference_is_the_base_model_without_the_adapter(tiny_dir: Path, tokenizer: Any) -> None:
    batches = preference_batches(tokenizer)
    model = run(tiny_dir, batches * 2, steps=4)[0].eval()
    both = stack_pair(batches[0])
    base = load_model(tiny_dir).eval()
    with torch.no_grad():
        policy = sequence_logprobs(model, both)
        with reference(model):
            ref = sequence_logprobs(model, both)
        plain = sequence_logprobs(base, both)
    assert not torch.allclose(policy, plain, atol=1e-3)  # the adapter changed something
    assert torch.allclose(ref, plain, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(sequence_logprobs(model, both), policy)  # re-enabled on leaving the context


def test_one_stacked_forward_gives_each_half_its_own_log_probs(tiny_dir: Path, tokenizer: Any) -> None:
    batch = preference_batches(tokenizer)[2]  # its chosen and rejected halves have different widths
    assert batch.chosen.input_ids.shape[1] != batch.rejected.input_ids.shape[1]
    both = stack_pair(batch)
    width = max(batch.chosen.input_ids.shape[1], batch.rejected.input_ids.shape[1])
    assert both.input_ids.shape == (4, width)
    assert int(both.mask.sum()) == int(batch.chosen.mask.sum() + batch.rejected.mask.sum())
    base = load_model(tiny_dir).eval()
    with torch.no_grad():
        stacked = sequence_logprobs(base, both)
        apart = torch.cat([sequence_logprobs(base, batch.chosen), sequence_logprobs(base, batch.rejected)])
    assert torch.allclose(stacked, apart, atol=1e-5)
    assert bool((stacked < 0).all())


def test_accumulation_normalizes_by_pairs_across_the_group(tiny_dir: Path, tokenizer: Any) -> None:
    together = preference_batches(tokenizer, per_batch=2)[:1]
    apart = preference_batches(tokenizer, per_batch=1)[:2]
    steps = 3
    one, one_history = run(tiny_dir, together * steps, steps=steps, seed=4)
    two, two_history = run(tiny_dir, apart * steps, steps=steps, seed=4, grad_accum=2)
    assert [m.target_tokens for m in two_history] == [2] * steps
    for a, b in zip(one_history, two_history, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, abs=1e-5)
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-4, abs=1e-6)
    # Adam divides by the gradients' size, so float noise in near-zero gradients grows to ~1e-5 in 3 steps.
    for (name, a), (_, b) in zip(one.named_parameters(), two.named_parameters(), strict=True):
        if a.requires_grad:
            assert torch.allclose(a, b, atol=1e-4), name


def test_stack_pair_adds_an_attention_mask_when_there_is_none() -> None:
    chosen = Batch(input_ids=torch.tensor([[1, 2, 3]]), mask=torch.tensor([[0, 1, 1]]))
    rejected = Batch(input_ids=torch.tensor([[1, 4]]), mask=torch.tensor([[0, 1]]))
    both = stack_pair(PreferenceBatch(chosen=chosen, rejected=rejected))
    assert both.input_ids.tolist() == [[1, 2, 3], [1, 4, 0]]
    assert both.mask.tolist() == [[0, 1, 1], [0, 1, 0]]
    assert both.attention_mask is not None
    assert both.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_beta_must_be_positive_and_the_method_picks_the_objective() -> None:
    with pytest.raises(ValueError, match="beta"):
        DpoObjective(0.0)
    dpo = objective_for(make_hyper())
    assert isinstance(dpo, DpoObjective)
    assert dpo.beta == BETA
    supervised = ResolvedHyperparameters(
        method_type="supervised", n_epochs=1, batch_size=1, learning_rate_multiplier=1.0, learning_rate=1e-3
    )
    assert isinstance(objective_for(supervised), SupervisedObjective)


def test_dpo_needs_a_peft_model(tiny_dir: Path, tokenizer: Any) -> None:
    with pytest.raises(TypeError, match="PEFT"):
        DpoObjective(BETA).loss(load_model(tiny_dir), preference_batches(tokenizer)[0])

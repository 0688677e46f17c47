"""Reinforcement fine-tuning (GRPO): advantages and loss by hand, then the objective on the tiny model.

No golden numbers from a model: the model tests compare two computations or two runs inside one test.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pytest

from tunewright.graders import Runtime, parse_grader
from tunewright.modeling.dataset import tokenize_dataset
from tunewright.modeling.hyperparams import ResolvedHyperparameters
from tunewright.trainer.backends.peft import PeftTrainingBackend
from tunewright.trainer.collate import pad_id_of
from tunewright.trainer.loop import train
from tunewright.trainer.rft import RftBatch, RftObjective, group_advantages, grpo_token_loss, row_means, sample

if TYPE_CHECKING:
    from pathlib import Path

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["alpha", "beta", "gamma", "delta"]


def contains(text: str) -> Any:
    return parse_grader(
        {
            "type": "string_check",
            "name": "has",
            "input": "{{sample.output_text}}",
            "reference": text,
            "operation": "like",
        }
    )


def hyper(learning_rate: float = 5e-2) -> ResolvedHyperparameters:
    return ResolvedHyperparameters(
        method_type="reinforcement",
        n_epochs=1,
        batch_size=2,
        learning_rate_multiplier=1.0,
        learning_rate=learning_rate,
        lora_rank=8,
        lora_alpha=16.0,
        lora_dropout=0.0,
        compute_multiplier=2.0,
    )


def prompts(tokenizer: Any) -> list[Any]:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": word}], "n": i}).encode() for i, word in enumerate(WORDS)
    ]
    return tokenize_dataset(lines, tokenizer, param="training_file", method="reinforcement", max_tokens=512).examples


def objective(tokenizer: Any, grader: Any, **options: Any) -> RftObjective:
    settings = {"group_size": 8, "max_completion_tokens": 4, "temperature": 0.3, **options}
    return RftObjective(grader, Runtime(), tokenizer, pad_id=pad_id_of(tokenizer), **settings)


def load(tiny_dir: Path) -> Any:
    return PeftTrainingBackend().load(tiny_dir, hyper(), seed=0, device="cpu")[0]


def test_advantages_are_rewards_relative_to_their_group_by_hand() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [2.0, 0.0, 1.0, 1.0]])
    advantages = group_advantages(rewards, eps=0.0 + 1e-12)
    std = math.sqrt(0.1875)  # population std of (1, 0, 0, 0)
    assert advantages[0].tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std])
    assert advantages[1].tolist() == [0.0] * 4  # a group that agrees teaches nothing
    assert advantages[2].tolist() == pytest.approx([math.sqrt(2), -math.sqrt(2), 0.0, 0.0])
    assert group_advantages(torch.tensor([[3.0, 3.0]])).tolist() == [[0.0, 0.0]]  # eps: no division by zero


def test_the_loss_is_minus_the_advantage_when_on_policy_and_at_the_reference() -> None:
    logps = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    advantages = torch.tensor([1.0, -0.5, 2.0])
    loss, kl = grpo_token_loss(logps, logps.detach(), logps.detach(), advantages, clip_eps=0.2, beta_kl=0.04)
    assert loss.tolist() == pytest.approx([-1.0, 0.5, -2.0])
    assert kl.tolist() == [0.0, 0.0, 0.0]
    loss.sum().backward()
    assert logps.grad.tolist() == pytest.approx([-1.0, 0.5, -2.0])  # descent raises log p where A > 0


def test_the_ratio_is_clipped_on_the_side_that_would_overshoot() -> None:
    old = torch.log(torch.tensor([0.1, 0.1, 0.1, 0.1]))
    logps = old + torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))  # ratios 1.5, 1.5, 0.5, 0.5
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, _ = grpo_token_loss(logps, old, logps, advantages, clip_eps=0.2, beta_kl=0.0)
    # min(r A, clip(r) A): A > 0 takes the clipped 1.2 (no credit past 1 + eps), A < 0 the unclipped -1.5;
    # r = 0.5: A > 0 takes 0.5, A < 0 takes the clipped -0.8.
    assert loss.tolist() == pytest.approx([-1.2, 1.5, -0.5, 0.8])


def test_the_kl_term_is_the_k3_estimator_by_hand() -> None:
    logps, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    loss, kl = grpo_token_loss(logps, logps, ref, torch.tensor([0.0]), clip_eps=0.2, beta_kl=0.5)
    assert kl.item() == pytest.approx(math.exp(-1) + 1 - 1)
    assert loss.item() == pytest.approx(0.5 * math.exp(-1))


def test_row_means_average_each_completion_over_its_own_tokens() -> None:
    values = torch.tensor([1.0, 3.0, 10.0, 2.0, 4.0, 6.0])
    rows = torch.tensor([0, 0, 1, 2, 2, 2])
    assert row_means(values, rows, 4).tolist() == [2.0, 10.0, 4.0, 0.0]


def test_the_first_step_has_zero_kl_and_counts_completions(tiny_dir: Path, tokenizer: Any) -> None:
    examples = prompts(tokenizer)
    rft = objective(tokenizer, contains("a"))
    batch = RftBatch(examples=examples[:2], seed=3)
    assert rft.targets(batch) == 16
    model = load(tiny_dir)
    model.train()
    loss, numerators = rft.loss(model, batch)
    assert numerators["kl"] == 0.0  # a fresh adapter is the reference
    assert 0.0 <= numerators["train_reward_mean"] <= 16.0
    assert loss.requires_grad
    sampled, trained = rft.take_tokens()
    assert 16 <= sampled <= 16 * 4
    assert trained == sampled + 8 * sum(len(e.prompt) for e in examples[:2])
    assert rft.take_tokens() == (0, 0)


def test_sampling_is_seeded_and_leaves_the_rng_and_mode_alone(tiny_dir: Path, tokenizer: Any) -> None:
    model = load(tiny_dir)
    model.train()
    rft = objective(tokenizer, contains("a"), max_completion_tokens=6, temperature=1.0)
    prompt = prompts(tokenizer)[0].prompt
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = sample(model, tokenizer, [prompt] * 6, rft, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert model.training
    again = sample(model, tokenizer, [prompt] * 6, rft, seed=7)
    other = sample(model, tokenizer, [prompt] * 6, rft, seed=8)
    assert [c.ids for c in first] == [c.ids for c in again]
    assert [c.ids for c in first] != [c.ids for c in other]
    assert len({tuple(c.ids) for c in first}) > 1  # the rows of one call differ


def test_a_multi_grader_reports_each_sub_graders_reward(tiny_dir: Path, tokenizer: Any) -> None:
    multi = parse_grader(
        {
            "type": "multi",
            "name": "both",
            "graders": {
                "a": {
                    "type": "string_check",
                    "name": "a",
                    "input": "{{sample.output_text}}",
                    "reference": "a",
                    "operation": "like",
                },
                "e": {
                    "type": "string_check",
                    "name": "e",
                    "input": "{{sample.output_text}}",
                    "reference": "e",
                    "operation": "like",
                },
            },
            "calculate_output": "(a + e) / 2",
        }
    )
    model = load(tiny_dir)
    _, numerators = objective(tokenizer, multi).loss(model, RftBatch(examples=prompts(tokenizer)[:2], seed=1))
    parts = numerators["train_reward_mean/a"] + numerators["train_reward_mean/e"]
    assert numerators["train_reward_mean"] == pytest.approx(parts / 2)


def test_training_raises_the_mean_reward_against_step_0_with_the_same_seed(tiny_dir: Path, tokenizer: Any) -> None:
    examples = prompts(tokenizer)
    rft = objective(tokenizer, contains("a"))
    model = load(tiny_dir)
    held_out = list(examples) * 8  # 32 graded samples, seeded alike before and after

    def mean_reward() -> float:
        stats = rft.evaluate(model, held_out, seed=1000, batch_size=16)
        return stats.total / stats.count

    before = mean_reward()
    steps = 40
    batches = [RftBatch(examples=examples[i : i + 2], seed=10 * step + i) for step in range(steps) for i in (0, 2)]
    result = train(model, batches, hyper=hyper(), total_steps=steps, seed=0, objective=rft, grad_accum=2)
    assert result.history[0].extra["kl"] == 0.0
    assert result.history[-1].extra["kl"] > 0.0  # the adapter moved away from the reference
    after = mean_reward()
    assert after > before + 0.1, (before, after)


def test_a_model_grader_is_answered_by_the_base_model_with_the_adapter_disabled(tiny_dir: Path, tokenizer: Any) -> None:
    from tunewright.graders import SamplingParams
    from tunewright.modeling.loading import load_model
    from tunewright.trainer.rft import base_model_sampler

    examples = prompts(tokenizer)
    model = load(tiny_dir)
    rft = objective(tokenizer, contains("a"))
    steps = 5
    batches = [RftBatch(examples=examples[:2], seed=step) for step in range(steps)]
    train(model, batches, hyper=hyper(), total_steps=steps, seed=0, objective=rft)  # the adapter moves
    pad = pad_id_of(tokenizer)
    messages = [{"role": "user", "content": "Score this: alpha"}]
    params = SamplingParams(temperature=0, max_completions_tokens=5)
    reply = base_model_sampler(model, tokenizer, pad_id=pad)("tiny", messages, params)
    plain = load_model(tiny_dir)
    plain.eval()
    from tunewright.modeling.chat import render_chat

    prompt = render_chat(tokenizer, messages, add_generation_prompt=True, with_mask=False).ids
    with torch.no_grad():
        greedy = plain.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=5, pad_token_id=pad)
    expected = greedy[0, len(prompt) :].tolist()
    assert reply.prompt_tokens == len(prompt)
    assert reply.completion_tokens >= 1
    stop = next((i for i, t in enumerate(expected) if t in rft_stops(model, tokenizer)), None)
    kept = expected if stop is None else expected[:stop]
    assert reply.text == tokenizer.decode(kept, skip_special_tokens=True)
    assert model.training  # the sampler left the trained model as it found it


def rft_stops(model: Any, tokenizer: Any) -> frozenset[int]:
    from tunewright.modeling.loading import stop_token_ids

    return stop_token_ids(model, tokenizer)

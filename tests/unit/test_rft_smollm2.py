"""Reinforcement fine-tuning of SmolLM2-135M on small sums with a `string_check` grader, plus a fuzzy match for
partial credit (slow: opt-in).

Runs only with `TUNEWRIGHT_RFT_SMOLLM2=1` (minutes on a CPU). It prints the mean reward before and after, and
asserts only that training did not lower it, measured on the same prompts with the same sampling seed.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import pytest

from tunewright.graders import Runtime, parse_grader
from tunewright.modeling.dataset import tokenize_dataset
from tunewright.modeling.hyperparams import ResolvedHyperparameters
from tunewright.modeling.loading import load_tokenizer
from tunewright.trainer.backends.peft import PeftTrainingBackend
from tunewright.trainer.collate import pad_id_of
from tunewright.trainer.loop import train
from tunewright.trainer.rft import RftBatch, RftObjective

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [
    pytest.mark.skipif(not os.environ.get("TUNEWRIGHT_RFT_SMOLLM2"), reason="set TUNEWRIGHT_RFT_SMOLLM2=1 to run"),
    pytest.mark.usefixtures("one_torch_thread"),
]

STEPS = int(os.environ.get("TUNEWRIGHT_RFT_SMOLLM2_STEPS", "16"))
GRADER = {  # partial credit: at temperature 1 a 135M model's exact answers are too rare to learn from
    "type": "multi",
    "name": "sum",
    "graders": {
        "has": {
            "type": "string_check",
            "name": "has",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "like",
        },
        "close": {
            "type": "text_similarity",
            "name": "close",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "evaluation_metric": "fuzzy_match",
        },
    },
    "calculate_output": "0.5 * has + 0.5 * close",
}


def sums(count: int, offset: int = 0) -> list[bytes]:
    lines = []
    for i in range(offset, offset + count):
        a, b = 1 + i % 7, 2 + (3 * i) % 6
        question = f"What is {a} + {b}? Reply with the number only, no words."
        lines.append(json.dumps({"messages": [{"role": "user", "content": question}], "answer": str(a + b)}).encode())
    return lines


def test_smollm2_learns_sums_with_a_string_check_grader(smollm2_dir: Path) -> None:
    tokenizer = load_tokenizer(smollm2_dir)
    data = tokenize_dataset(sums(16), tokenizer, param="training_file", method="reinforcement", max_tokens=512)
    held_out = tokenize_dataset(
        sums(16, 16), tokenizer, param="validation_file", method="reinforcement", max_tokens=512
    )
    hyper = ResolvedHyperparameters(
        method_type="reinforcement",
        n_epochs=1,
        batch_size=4,
        learning_rate_multiplier=1.0,
        learning_rate=1e-3,
        lora_dropout=0.0,
    )
    model: Any = PeftTrainingBackend().load(smollm2_dir, hyper, seed=0, device="cpu")[0]
    rft = RftObjective(
        parse_grader(GRADER), Runtime(), tokenizer, group_size=4, pad_id=pad_id_of(tokenizer), max_completion_tokens=8
    )

    def mean_reward() -> float:
        stats = rft.evaluate(model, held_out.examples * 2, seed=99, batch_size=16)
        return stats.total / stats.count

    before = mean_reward()
    batches = [RftBatch(examples=data.examples[(4 * s) % 16 : (4 * s) % 16 + 4], seed=s) for s in range(STEPS)]
    history = train(model, batches, hyper=hyper, total_steps=STEPS, seed=0, objective=rft).history
    after = mean_reward()
    curve = [round(step.extra["train_reward_mean"], 3) for step in history]
    print(f"\nSmolLM2 sums: held-out mean reward {before:.3f} -> {after:.3f}; train reward per step {curve}")
    assert after >= before

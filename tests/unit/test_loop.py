"""The shared training loop and the PEFT backend, on the tiny model: seeded, masked, accumulated, saved, stoppable.

Every comparison is between two runs inside one test (STYLE.md §7): no golden numbers, no timing.
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import TYPE_CHECKING, Any

import pytest

from tunewright.trainer.backends import select_backend
from tunewright.trainer.backends.peft import PeftTrainingBackend
from tunewright.trainer.hyperparams import ResolvedHyperparameters
from tunewright.trainer.loop import Batch, StepMetrics, lr_factor, token_loss, train
from tunewright.trainer.modeling import load_model, render_chat

if TYPE_CHECKING:
    from pathlib import Path

torch = pytest.importorskip("torch")

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
# A fixed mapping the model can learn: each word answers with the next one.
PAIRS = [(word, WORDS[(i + 1) % len(WORDS)]) for i, word in enumerate(WORDS)]


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_hyper(*, learning_rate: float = 1e-2, lora_dropout: float = 0.0) -> ResolvedHyperparameters:
    return ResolvedHyperparameters(
        method_type="supervised",
        n_epochs=1,
        batch_size=1,
        learning_rate_multiplier=1.0,
        learning_rate=learning_rate,
        lora_rank=8,
        lora_alpha=16.0,
        lora_dropout=lora_dropout,
    )


def make_example(tokenizer: Any, question: str, answer: str) -> tuple[list[int], list[int]]:
    chat = render_chat(tokenizer, [{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return chat.ids, chat.mask


def make_batch(tokenizer: Any, examples: list[tuple[list[int], list[int]]]) -> Batch:
    """Right-pad examples into one batch."""
    width = max(len(ids) for ids, _ in examples)
    pad = tokenizer.pad_token_id
    ids = [row + [pad] * (width - len(row)) for row, _ in examples]
    mask = [bits + [0] * (width - len(bits)) for _, bits in examples]
    attention = [[1] * len(row) + [0] * (width - len(row)) for row, _ in examples]
    return Batch(input_ids=torch.tensor(ids), mask=torch.tensor(mask), attention_mask=torch.tensor(attention))


def mapping_batches(tokenizer: Any, steps: int) -> list[Batch]:
    examples = [make_example(tokenizer, question, answer) for question, answer in PAIRS]
    return [make_batch(tokenizer, [examples[(2 * s) % 8], examples[(2 * s + 1) % 8]]) for s in range(steps)]


def run(tiny_dir: Path, batches: list[Batch], *, seed: int, steps: int, **options: Any) -> tuple[Any, list[Any]]:
    hyper = options.pop("hyper", make_hyper())
    model, _ = PeftTrainingBackend().load(tiny_dir, hyper, seed=seed, device="cpu")
    result = train(model, batches, hyper=hyper, total_steps=steps, seed=seed, **options)
    return model, result.history


def test_same_seed_gives_the_same_loss_curve_and_another_seed_does_not(tiny_dir: Path, tokenizer: Any) -> None:
    batches = mapping_batches(tokenizer, 4)
    hyper = make_hyper(lora_dropout=0.1)  # dropout draws from the seeded RNG too
    first = [m.train_loss for m in run(tiny_dir, batches, seed=7, steps=4, hyper=hyper)[1]]
    again = [m.train_loss for m in run(tiny_dir, batches, seed=7, steps=4, hyper=hyper)[1]]
    other = [m.train_loss for m in run(tiny_dir, batches, seed=8, steps=4, hyper=hyper)[1]]
    assert len(first) == 4
    assert first == again
    assert first != other


def test_loss_goes_down_on_a_fixed_mapping(tiny_dir: Path, tokenizer: Any) -> None:
    history = run(tiny_dir, mapping_batches(tokenizer, 32), seed=0, steps=32)[1]
    losses = [m.train_loss for m in history]
    assert len(losses) == 32
    # The tiny model's output head is its (untrained, tied) embedding, which caps how sharp its logits can get:
    # the loss falls by about 0.5 nats here, not to zero.
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.25
    assert history[-1].train_mean_token_accuracy > history[0].train_mean_token_accuracy


def test_loss_counts_only_masked_tokens(tiny_dir: Path, tokenizer: Any) -> None:
    ids, _ = make_example(tokenizer, "alpha", "beta gamma")
    position = len(ids) - 3
    only_one = [0] * len(ids)
    only_one[position] = 1
    batch = Batch(input_ids=torch.tensor([ids]), mask=torch.tensor([only_one]))
    # A fresh LoRA adapter is a no-op (B = 0), so the first step's loss is the base model's.
    first = run(tiny_dir, [batch], seed=0, steps=1)[1][0]
    base = load_model(tiny_dir)
    with torch.no_grad():
        logits = base(input_ids=torch.tensor([ids])).logits[0, position - 1]
    expected = torch.nn.functional.cross_entropy(logits[None], torch.tensor([ids[position]])).item()
    assert first.target_tokens == 1
    assert first.train_loss == pytest.approx(expected, abs=1e-5)


def test_accumulation_normalizes_by_target_tokens_across_the_group(tiny_dir: Path, tokenizer: Any) -> None:
    short = make_example(tokenizer, "alpha", "beta")
    long = make_example(tokenizer, "gamma", "delta epsilon zeta eta theta alpha beta")
    assert sum(short[1]) != sum(long[1])
    accumulated, acc = run(
        tiny_dir, [make_batch(tokenizer, [short]), make_batch(tokenizer, [long])], seed=3, steps=1, grad_accum=2
    )
    together, tog = run(tiny_dir, [make_batch(tokenizer, [short, long])], seed=3, steps=1)
    assert acc[0].target_tokens == tog[0].target_tokens == sum(short[1]) + sum(long[1])
    assert acc[0].train_loss == pytest.approx(tog[0].train_loss, abs=1e-5)
    assert acc[0].grad_norm == pytest.approx(tog[0].grad_norm, abs=1e-5)
    for (name, a), (_, b) in zip(accumulated.named_parameters(), together.named_parameters(), strict=True):
        if a.requires_grad:
            assert torch.allclose(a, b, atol=1e-5), name
    # The test can tell: a mean of per-example means is a different number here.
    with torch.no_grad():
        means = [
            token_loss(together, make_batch(tokenizer, [ex]))[0].item() / (sum(ex[1]) - ex[1][0])
            for ex in (short, long)
        ]
    assert abs(sum(means) / 2 - tog[0].train_loss) > 1e-3


def test_saved_adapter_loads_in_peft_with_the_same_logits(tiny_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    from peft import PeftModel

    backend = PeftTrainingBackend()
    hyper = make_hyper()
    model, _ = backend.load(tiny_dir, hyper, seed=0, device="cpu")
    train(model, mapping_batches(tokenizer, 3), hyper=hyper, total_steps=3, seed=0)
    backend.save_adapter(model, tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    loaded = PeftModel.from_pretrained(load_model(tiny_dir), tmp_path / "adapter").eval()
    ids = torch.tensor([make_example(tokenizer, "alpha", "beta")[0]])
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
        base = load_model(tiny_dir)(input_ids=ids).logits
    assert not torch.allclose(expected, base, atol=1e-4)  # the adapter changed something
    assert torch.allclose(got, expected, atol=1e-5)


def test_on_step_returning_false_stops_at_that_step(tiny_dir: Path, tokenizer: Any) -> None:
    seen: list[StepMetrics] = []

    def on_step(metrics: StepMetrics) -> bool:
        seen.append(metrics)
        return metrics.step < 3

    hyper = make_hyper()
    model, _ = PeftTrainingBackend().load(tiny_dir, hyper, seed=0, device="cpu")
    result = train(model, mapping_batches(tokenizer, 8), hyper=hyper, total_steps=8, seed=0, on_step=on_step)
    assert result.stopped
    assert result.steps == 3
    assert [m.step for m in seen] == [1, 2, 3]
    assert all(m.total_steps == 8 for m in seen)


def test_schedule_warms_up_then_decays_to_near_zero() -> None:
    factors = [lr_factor(s, total_steps=10, warmup_steps=2, decay="cosine") for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(factors[1:]))
    assert 0 < factors[-1] < 0.05
    linear = [lr_factor(s, total_steps=10, warmup_steps=2, decay="linear") for s in range(10)]
    assert linear[-1] == pytest.approx(1 / 8)
    assert math.isclose(linear[6], 0.5)


def test_select_backend_is_peft_without_cuda_and_never_imports_unsloth() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the choice depends on whether unsloth is installed")
    backend = select_backend()
    assert isinstance(backend, PeftTrainingBackend)
    assert backend.name == "peft"
    assert "unsloth" not in sys.modules

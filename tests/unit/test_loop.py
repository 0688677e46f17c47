"""The shared training loop and the PEFT backend, on the tiny model: seeded, masked, accumulated, saved, stoppable.

Every comparison is between two runs inside one test: no golden numbers, no timing (docs/architecture.md "Tests and
benchmarks").
"""

from __future__ import annotations

import itertools
import math
import random
import sys
from typing import TYPE_CHECKING, Any

import pytest

from tunewright.modeling.chat import render_chat
from tunewright.modeling.hyperparams import ResolvedHyperparameters
from tunewright.modeling.loading import load_model
from tunewright.trainer.backends import select_backend
from tunewright.trainer.backends.peft import PeftTrainingBackend
from tunewright.trainer.loop import (
    Batch,
    StepMetrics,
    SupervisedObjective,
    _body_and_head,
    lr_factor,
    make_training_state,
    restore_rng_state,
    rng_state,
    token_loss,
    train,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

torch = pytest.importorskip("torch")

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
# A fixed mapping the model can learn: each word answers with the next one.
PAIRS = [(word, WORDS[(i + 1) % len(WORDS)]) for i, word in enumerate(WORDS)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def perturb_adapter(model: Any, seed: int) -> None:
    """Give every LoRA matrix small random values, so that A's gradients are not zero (B starts at 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def lora_grads(model: Any) -> dict[str, Any]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def test_target_only_head_matches_full_logits_in_loss_and_gradients(tiny_dir: Path, tokenizer: Any) -> None:
    hyper = make_hyper()
    model, _ = PeftTrainingBackend().load(tiny_dir, hyper, seed=0, device="cpu")
    perturb_adapter(model, seed=1)
    model.eval()  # no dropout: both passes must see the same function
    assert _body_and_head(model) is not None  # the tiny Llama takes the target-only path
    batch = mapping_batches(tokenizer, 1)[0]
    results = []
    for full in (False, True):
        loss, hits = token_loss(model, batch, full_logits=full)
        loss.backward()
        results.append((loss.detach(), hits, lora_grads(model)))
        model.zero_grad(set_to_none=True)
    (fast, fast_hits, fast_grads), (full, full_hits, full_grads) = results
    assert torch.allclose(fast, full, rtol=1e-5, atol=1e-5)
    assert fast_hits == full_hits
    assert fast_grads.keys() == full_grads.keys()
    assert any(name for name in fast_grads if "lora_A" in name)
    for name, grad in fast_grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(grad, full_grads[name], rtol=1e-4, atol=1e-6), name


def test_a_model_without_a_known_plain_head_gets_full_logits(tiny_dir: Path, tokenizer: Any) -> None:
    base = load_model(tiny_dir)
    assert _body_and_head(base) is not None  # an unwrapped CausalLM splits too
    base.config.model_type = "gemma2"  # soft-caps its logits after the head: must not be split
    assert _body_and_head(base) is None
    batch = mapping_batches(tokenizer, 1)[0]
    with torch.no_grad():
        assert torch.allclose(token_loss(base, batch)[0], token_loss(base, batch, full_logits=True)[0])


def test_rng_state_round_trips_torch_and_python_random() -> None:
    saved = rng_state()
    first = (torch.rand(3), random.random())
    # A round trip through a serializer may turn the python state's tuples into lists.
    version, internal, gauss = saved["python"]
    restore_rng_state({**saved, "python": [version, list(internal), gauss]})
    again = (torch.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert first[1] == again[1]


def epochs_of(batches: list[Batch], epochs: int, drawn: list[int]) -> Iterator[Batch]:
    """A generator over several epochs, as the worker feeds ``train``; counts the batches drawn."""
    for _ in range(epochs):
        for batch in batches:
            drawn.append(1)
            yield batch


def test_a_resumed_run_continues_the_same_curve(tiny_dir: Path, tokenizer: Any) -> None:
    hyper = make_hyper(lora_dropout=0.1)  # the restored RNG states must drive the dropout masks
    batches = list(epochs_of(mapping_batches(tokenizer, 3), 2, []))  # 6 micro-batches, 3 steps of 2
    backend = PeftTrainingBackend()
    whole, _ = backend.load(tiny_dir, hyper, seed=5, device="cpu")
    uninterrupted = train(whole, batches, hyper=hyper, total_steps=3, grad_accum=2, seed=5).history

    first, _ = backend.load(tiny_dir, hyper, seed=5, device="cpu")
    state = make_training_state(first, learning_rate=hyper.learning_rate, total_steps=3)
    stopped = train(
        first, batches, hyper=hyper, total_steps=3, grad_accum=2, seed=5, state=state, on_step=lambda m: m.step < 1
    )
    assert stopped.stopped and stopped.steps == 1
    saved = (
        {n: p.detach().clone() for n, p in first.named_parameters() if p.requires_grad},
        state.optimizer.state_dict(),
        state.scheduler.state_dict(),
        rng_state(),
    )
    torch.manual_seed(1234)  # a new process: nothing of the first run's RNG is left

    second, _ = backend.load(tiny_dir, hyper, seed=99, device="cpu")
    with torch.no_grad():
        for name, param in second.named_parameters():
            if param.requires_grad:
                param.copy_(saved[0][name])
    resumed = make_training_state(second, learning_rate=hyper.learning_rate, total_steps=3)
    resumed.optimizer.load_state_dict(saved[1])
    resumed.scheduler.load_state_dict(saved[2])
    resumed.step = 1
    restore_rng_state(saved[3])
    rest = train(second, iter(batches[2:]), hyper=hyper, total_steps=3, grad_accum=2, seed=5, state=resumed).history
    assert [m.step for m in rest] == [2, 3]
    assert [m.train_loss for m in stopped.history + rest] == [m.train_loss for m in uninterrupted]
    assert [m.learning_rate for m in rest] == [m.learning_rate for m in uninterrupted[1:]]


def test_no_batch_is_drawn_past_the_last_step(tiny_dir: Path, tokenizer: Any) -> None:
    hyper = make_hyper()
    model, _ = PeftTrainingBackend().load(tiny_dir, hyper, seed=0, device="cpu")
    drawn: list[int] = []
    result = train(model, epochs_of(mapping_batches(tokenizer, 2), 3, drawn), hyper=hyper, total_steps=3, seed=0)
    assert result.steps == 3
    assert len(drawn) == 3
    finished = make_training_state(model, learning_rate=hyper.learning_rate, total_steps=3)
    finished.step = 3  # a resume point written after the last step
    again = train(
        model, epochs_of(mapping_batches(tokenizer, 2), 3, drawn), hyper=hyper, total_steps=3, seed=0, state=finished
    )
    assert again.steps == 3
    assert len(drawn) == 3


class CountingObjective(SupervisedObjective):
    """The supervised loss, plus a numerator that sums to the units: its per-unit mean is 1."""

    def loss(self, model: Any, batch: Batch) -> tuple[Any, dict[str, float]]:
        loss_sum, numerators = super().loss(model, batch)
        return loss_sum, {**numerators, "units": float(self.targets(batch))}


def test_an_objective_drives_the_loss_and_its_extra_metrics_are_per_unit_means(tiny_dir: Path, tokenizer: Any) -> None:
    batches = mapping_batches(tokenizer, 2)
    plain = run(tiny_dir, batches, seed=2, steps=1, grad_accum=2)[1]
    counted = run(tiny_dir, batches, seed=2, steps=1, grad_accum=2, objective=CountingObjective())[1]
    assert plain[0].extra == {}
    assert counted[0].extra == {"units": pytest.approx(1.0)}
    assert counted[0].train_loss == plain[0].train_loss
    assert counted[0].train_mean_token_accuracy == plain[0].train_mean_token_accuracy

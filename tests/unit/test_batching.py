"""Length-aware batching: every example once per epoch, a seeded plan, and far less padding than random order."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tunewright.trainer.batching import padding_fraction, plan_batches

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu")
WORDS += (
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
)  # the pinned set's vocabulary (docs/architecture.md "Tests and benchmarks"), in its order
TEMPLATE_TOKENS = 12  # role markers, "Q{i}:" and end-of-turn tokens, roughly


def pinned_lengths() -> list[int]:
    """Token-count proxies for the pinned mixed-length set: words of each row plus the template."""
    rng = random.Random(0)
    lengths = []
    for _ in range(200):
        question = [rng.choice(WORDS) for _ in range(rng.randint(3, 40))]
        answer = [rng.choice(WORDS) for _ in range(rng.randint(2, 120))]
        lengths.append(len(question) + len(answer) + TEMPLATE_TOKENS)
    return lengths


def random_plan(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def assert_each_once(batches: list[list[int]], n: int) -> None:
    seen = Counter(i for batch in batches for i in batch)
    assert sorted(seen) == list(range(n))
    assert set(seen.values()) == {1}


@pytest.mark.parametrize(("n", "batch_size", "factor"), [(200, 8, 50), (1001, 7, 3), (5, 8, 50), (64, 1, 1)])
def test_every_example_is_planned_exactly_once_per_epoch(n: int, batch_size: int, factor: int) -> None:
    lengths = [random.Random(i).randint(1, 500) for i in range(n)]
    for epoch in range(3):
        batches = plan_batches(lengths, batch_size=batch_size, seed=7, epoch=epoch, mega_batch_factor=factor)
        assert_each_once(batches, n)
        assert all(1 <= len(b) <= batch_size for b in batches)
        assert sum(len(b) < batch_size for b in batches) <= 1


def test_same_seed_and_epoch_give_the_same_plan_and_other_epochs_differ() -> None:
    lengths = pinned_lengths()
    plans = [plan_batches(lengths, batch_size=8, seed=42, epoch=e) for e in (0, 0, 1, 2)]
    assert plans[0] == plans[1]
    assert plans[0] != plans[2] != plans[3]
    assert plans[0] != plan_batches(lengths, batch_size=8, seed=43, epoch=0)


def test_longest_example_is_in_the_first_batch() -> None:
    lengths = pinned_lengths()
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    for epoch in range(3):
        assert longest in plan_batches(lengths, batch_size=8, seed=1, epoch=epoch)[0]


def test_grouped_plan_pads_far_less_than_random_order_on_the_pinned_set() -> None:
    lengths = pinned_lengths()
    grouped = padding_fraction(lengths, plan_batches(lengths, batch_size=8, seed=0, epoch=0))
    shuffled = padding_fraction(lengths, random_plan(lengths, 8, seed=0))
    plain = padding_fraction(lengths, plan_batches(lengths, batch_size=8, seed=0, epoch=0, mega_batch_factor=1))
    assert shuffled > 0.2
    assert plain > 0.2
    assert grouped < shuffled / 2
    assert grouped < 0.05


def test_padding_fraction_counts_pad_tokens_over_batch_tokens() -> None:
    assert padding_fraction([4, 2, 3, 3], [[0, 1], [2, 3]]) == pytest.approx(2 / 14)
    assert padding_fraction([5], []) == 0.0


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches([1, 2], batch_size=0, seed=0, epoch=0)


def test_empty_input_gives_empty_plans() -> None:
    assert plan_batches([], batch_size=4, seed=0, epoch=0) == []

"""Length-aware batching for the training loop: which examples go together, so padding stays small.

Pure Python (no torch): the loop hands in per-example token counts and gets back lists of example indices.

- `plan_batches` does what transformers' ``group_by_length`` sampler does — shuffle, cut into mega-batches of
  ``mega_batch_factor * batch_size`` examples, sort each by length, cut into batches — then shuffles the order of
  the batches, so steps still see lengths in random order. The RNG is seeded from the job seed and the epoch:
  a resumed run replays exactly the plan of an uninterrupted one.
- `padding_fraction` measures a plan: padded tokens over all tokens of the padded batches.
"""

from __future__ import annotations

import random

DEFAULT_MEGA_BATCH_FACTOR = 50


def plan_batches(
    lengths: list[int],
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    mega_batch_factor: int = DEFAULT_MEGA_BATCH_FACTOR,
    longest_first: bool = True,
) -> list[list[int]]:
    """Group examples of similar length into batches, in a seeded random order.

    Every example appears exactly once; only the last batch of the epoch's last mega-batch may be short.

    Args:
        lengths: Token count of each example, indexed by example.
        batch_size: Examples per batch.
        seed: The job seed.
        epoch: The epoch number; a different epoch gives a different plan.
        mega_batch_factor: Batches per mega-batch; 1 gives plain shuffled batches.
        longest_first: Put the batch holding the longest example first, so the step that needs the most memory
            runs at once and an out-of-memory error shows before any time is spent.

    Returns:
        Batches of example indices, in training order.

    Raises:
        ValueError: `batch_size` or `mega_batch_factor` is below 1.
    """
    if batch_size < 1 or mega_batch_factor < 1:
        raise ValueError(f"batch_size and mega_batch_factor must be at least 1, got {batch_size}, {mega_batch_factor}")
    # A string seed is hashed with SHA-512, the same in every process (unlike hash()); no secrecy needed here.
    rng = random.Random(f"tunewright.batches:{seed}:{epoch}")  # noqa: S311
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * mega_batch_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        group = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(group[b : b + batch_size] for b in range(0, len(group), batch_size))
    rng.shuffle(batches)
    if longest_first and batches:
        first = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(first))
    return batches


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Return padded tokens / all tokens when each batch is padded to its longest example (0.0 when empty)."""
    total = padded = 0
    for batch in batches:
        if not batch:
            continue
        row = max(lengths[i] for i in batch)
        total += row * len(batch)
        padded += row * len(batch) - sum(lengths[i] for i in batch)
    return padded / total if total else 0.0

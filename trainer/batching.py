"""Length-aware batching for the training loop: which examples go together, so padding stays small.

Pure Python (no torch): the loop hands in per-example token counts and gets back lists of example indices.

- `plan_batches` does what transformers' ``group_by_length`` sampler does — shuffle, cut into mega-batches of
  ``mega_batch_factor * batch_size`` examples, sort each by length, cut into batches — then shuffles the order of
  the batches, so steps still see lengths in random order. The RNG is seeded from the job seed and the epoch:
  a resumed run replays exactly the plan of an uninterrupted one.
- `pack_sequences` puts several examples in one row under a token budget, for packed training.
- `padding_fraction` measures a plan: padded tokens over all tokens of the padded batches.
"""

from __future__ import annotations

import bisect
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


def packed_padding_fraction(lengths: list[int], packs: list[list[int]], max_tokens: int) -> float:
    """Return the unused fraction of `max_tokens`-long rows holding `packs` (0.0 when empty)."""
    total = max_tokens * len(packs)
    used = sum(lengths[i] for pack in packs for i in pack)
    return (total - used) / total if total else 0.0


def pack_sequences(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Pack examples into rows of at most `max_tokens` tokens, best fit decreasing.

    Examples are placed longest first, each into the open row it fills most tightly (a new row when none has
    room). Best fit has first fit's worst case (11/9 of the optimal row count, plus a constant) and, with the free
    space kept in a sorted list, finds each row by bisection instead of first fit's scan over every row (100,000
    examples in about a second). Ties go to the lower index, so the result depends only on `lengths`.

    Args:
        lengths: Token count of each example, indexed by example.
        max_tokens: The row length.

    Returns:
        Rows of example indices; within a row, longest first. Every example is in exactly one row.

    Raises:
        ValueError: `max_tokens` is below 1, or an example is longer than `max_tokens` (truncate it first).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        raise ValueError(f"{len(too_long)} examples are longer than max_tokens={max_tokens} (first: #{too_long[0]})")
    packs: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need = lengths[i]
        slot = bisect.bisect_left(free, (need, -1))
        if slot == len(free):
            packs.append([i])
            bisect.insort(free, (max_tokens - need, len(packs) - 1))
            continue
        room, row = free.pop(slot)
        packs[row].append(i)
        bisect.insort(free, (room - need, row))
    return packs

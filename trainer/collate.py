"""Turn tokenized examples into padded tensors for the loop: right padding, a target mask and an attention mask.

A batch is as wide as its longest example (``batching.plan_batches`` keeps similar lengths together, so little
is padded). Padding has target mask 0 and attention mask 0, so it costs no loss and no attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tunewright.trainer.loop import Batch

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import torch

    from tunewright.modeling.dataset import PreferenceExample, TokenizedExample


@dataclass(frozen=True, slots=True)
class PreferenceBatch:
    """A DPO micro-batch: the chosen and rejected sequences (prompt + output) of the same pairs, row by row."""

    chosen: Batch
    rejected: Batch


B = TypeVar("B")


def budget_batches(
    examples: Sequence[Any], *, budget: int, collate: Callable[[Sequence[Any]], B], rows: int = 1
) -> list[B]:
    """Cut examples, longest first, into padded micro-batches of at most ``budget`` padded tokens each.

    A micro-batch is as wide as its longest example, times ``rows`` sequences per example (2 for DPO pairs);
    an example wider than the budget still gets a micro-batch of its own.

    Args:
        examples: Tokenized examples (anything with a ``length``).
        budget: Padded tokens per micro-batch (``TUNEWRIGHT_MICRO_BATCH_TOKENS``).
        collate: Pads a list of examples into one micro-batch.
        rows: Sequences per example.
    """
    return [collate(group) for group in budget_groups(examples, budget=budget, rows=rows)]


def budget_groups(examples: Sequence[Any], *, budget: int, rows: int = 1, extra: int = 0) -> list[list[Any]]:
    """The groups of ``budget_batches`` before they are padded.

    Each example counts ``extra`` tokens wider (room for the completions a reinforcement step samples).
    """
    ordered = sorted(examples, key=lambda example: -example.length)
    groups: list[list[Any]] = []
    current: list[Any] = []
    for example in ordered:
        width = max([example.length] + [other.length for other in current]) + extra
        if current and (len(current) + 1) * width * rows > budget:
            groups.append(current)
            current = []
        current.append(example)
    if current:
        groups.append(current)
    return groups


def pad_id_of(tokenizer: Any) -> int:
    """Return the id used for padding: the tokenizer's pad token, else its eos token, else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def collate_examples(examples: Sequence[TokenizedExample], pad_id: int) -> Batch:
    """Right-pad supervised examples into one ``Batch``.

    Raises:
        ValueError: ``examples`` is empty.
    """
    return _pad([(example.ids, example.mask) for example in examples], pad_id)


def collate_preferences(examples: Sequence[PreferenceExample], pad_id: int) -> PreferenceBatch:
    """Right-pad preference pairs: row ``i`` of ``chosen`` and of ``rejected`` share example ``i``'s prompt.

    The target mask covers the output tokens only (not the prompt), so log-probabilities summed under it are
    those of the completion given the prompt.

    Raises:
        ValueError: ``examples`` is empty.
    """
    chosen = [(e.prompt + e.chosen, [0] * len(e.prompt) + [1] * len(e.chosen)) for e in examples]
    rejected = [(e.prompt + e.rejected, [0] * len(e.prompt) + [1] * len(e.rejected)) for e in examples]
    return PreferenceBatch(chosen=_pad(chosen, pad_id), rejected=_pad(rejected, pad_id))


def _pad(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    import torch

    if not rows:
        raise ValueError("cannot collate an empty batch")
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, targets) in enumerate(rows):
        input_ids[row, : len(ids)] = _tensor(ids)
        mask[row, : len(targets)] = _tensor(targets)
        attention[row, : len(ids)] = 1
    return Batch(input_ids=input_ids, mask=mask, attention_mask=attention)


def _tensor(values: list[int]) -> torch.Tensor:
    import torch

    return torch.tensor(values, dtype=torch.long)

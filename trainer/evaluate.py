"""Validation: an objective's loss and accuracy over batches, without training and without touching the RNG.

``evaluate`` normalizes as the training loop does: the summed loss over all batches divided by their units
(target tokens for supervised fine-tuning, pairs for DPO), so a validation loss reads like a training loss.
The frequent "every N steps" validation runs on a fixed seeded sample of the validation batches
(``sample_batches``); the full set is evaluated at checkpoints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from tunewright.trainer.loop import SupervisedObjective, unit_means

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from tunewright.trainer.loop import Objective

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EvalMetrics:
    """What ``evaluate`` measured: per-unit means over every batch (a unit is a target token, or a DPO pair).

    ``mean_token_accuracy`` is the fraction of target tokens predicted right (supervised) or of pairs whose chosen
    reward beats the rejected one (DPO); ``extra`` holds the objective's other means (DPO's rewards).
    """

    loss: float
    mean_token_accuracy: float
    targets: int
    extra: dict[str, float] = field(default_factory=dict)


def evaluate(model: Any, batches: Iterable[Any], objective: Objective | None = None) -> EvalMetrics:
    """Return ``objective``'s loss and metrics over ``batches``, in eval mode and without gradients.

    The model's train/eval mode is restored afterwards, and no ``.grad`` is created or changed.

    Args:
        model: The (PEFT-wrapped) model being trained.
        batches: Validation micro-batches, in the objective's batch type.
        objective: The loss; ``SupervisedObjective()`` when None.

    Returns:
        The means per unit; all zero when the batches hold no unit.
    """
    import torch

    objective = SupervisedObjective() if objective is None else objective
    was_training = model.training
    units = 0
    loss_total = 0.0
    sums: dict[str, float] = {}
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                units += objective.targets(batch)
                loss_sum, numerators = objective.loss(model, batch)
                loss_total += float(loss_sum)
                for name, value in numerators.items():
                    sums[name] = sums.get(name, 0.0) + value
    finally:
        model.train(was_training)
    accuracy, extra = unit_means(sums, units)
    return EvalMetrics(
        loss=loss_total / units if units else 0.0, mean_token_accuracy=accuracy, targets=units, extra=extra
    )


def sample_batches(batches: Sequence[T], n: int, seed: int) -> list[T]:
    """Return a fixed sample of ``n`` batches (all when there are no more), in their original order.

    The same ``seed`` picks the same batches, so every periodic validation of a job measures the same sample.

    Raises:
        ValueError: ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    if n >= len(batches):
        return list(batches)
    chosen = sorted(random.Random(seed).sample(range(len(batches)), n))  # noqa: S311 (a sample, not a secret)
    return [batches[index] for index in chosen]

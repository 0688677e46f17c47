"""Our own training loop, shared by every backend (DESIGN.md "Our own loop shared by both backends").

AdamW on the trainable parameters, linear warmup then cosine (or linear) decay, gradient clipping, and gradient
accumulation. The loss covers target tokens only (``mask`` from ``render_chat``) and is normalized by the number
of target tokens across the whole accumulation group: the sum of token losses over every micro-batch of an
optimizer step, divided by their target count, not a mean of per-batch means. So ``grad_accum=2`` with batches
of 1 takes the same step as one batch of 2, whatever each example's length.

A fixed ``seed`` gives an identical loss curve. ``on_step`` sees each step's metrics after the optimizer step and
returns False to stop (cancel, pause, lost lease); that is checked only between optimizer steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    import torch

    from tunewright.trainer.hyperparams import ResolvedHyperparameters

DEFAULT_WARMUP_RATIO = 0.1
DEFAULT_MAX_GRAD_NORM = 1.0
DEFAULT_WEIGHT_DECAY = 0.0


@dataclass(frozen=True, slots=True)
class Batch:
    """A micro-batch: token ids, a target mask (1 where the token is trained) and an optional attention mask.

    ``mask[b, i] == 1`` means token ``i`` is predicted (from positions ``< i``) and counted in the loss, as
    ``RenderedChat.mask`` marks it. Padding has ``mask`` 0 and ``attention_mask`` 0.
    """

    input_ids: torch.Tensor
    mask: torch.Tensor
    attention_mask: torch.Tensor | None = None


@dataclass(frozen=True, slots=True)
class StepMetrics:
    """What one optimizer step measured; losses are per target token, before the step's update."""

    step: int  # 1-based optimizer step
    total_steps: int
    train_loss: float
    train_mean_token_accuracy: float
    target_tokens: int
    learning_rate: float
    grad_norm: float  # before clipping


@dataclass(slots=True)
class TrainingState:
    """The optimizer, the schedule and the steps taken: what a checkpoint saves and a resume restores.

    Build it with ``make_training_state``, load saved ``state_dict``s into it, and pass it to ``train`` to resume
    after ``step`` steps (the caller also restores the RNG states; ``train`` seeds only a fresh run).
    """

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0
    history: list[StepMetrics] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TrainResult:
    """How a ``train`` call ended."""

    steps: int  # optimizer steps taken in all (a resumed run counts the earlier ones)
    stopped: bool  # ``on_step`` returned False
    history: list[StepMetrics]


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, decay: Literal["cosine", "linear"]) -> float:
    """Return the learning-rate multiplier for 0-based optimizer step ``step``.

    Linear warmup reaches 1.0 at step ``warmup_steps - 1`` (the first step already trains), then the factor
    decays towards 0 by a half cosine or a straight line; it stays above 0 at the last step.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if decay == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_training_state(
    model: Any,
    *,
    learning_rate: float,
    total_steps: int,
    warmup_ratio: float = DEFAULT_WARMUP_RATIO,
    decay: Literal["cosine", "linear"] = "cosine",
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
) -> TrainingState:
    """Build AdamW over the model's trainable parameters and its warmup + decay schedule.

    Args:
        model: The PEFT-wrapped model; only parameters with ``requires_grad`` are optimized.
        learning_rate: The peak learning rate.
        total_steps: Optimizer steps in the whole run (the schedule's length).
        warmup_ratio: Fraction of ``total_steps`` spent warming up (at least one step).
        decay: ``"cosine"`` or ``"linear"`` decay after warmup.
        weight_decay: AdamW's decoupled weight decay.

    Returns:
        A state at step 0.

    Raises:
        ValueError: ``total_steps`` is below 1 or the model has no trainable parameters.
    """
    import torch

    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    warmup = max(1, math.ceil(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        return lr_factor(step, total_steps=total_steps, warmup_steps=warmup, decay=decay)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return TrainingState(optimizer=optimizer, scheduler=scheduler)


def train(
    model: Any,
    batches: Iterable[Batch | tuple[torch.Tensor, torch.Tensor]],
    *,
    hyper: ResolvedHyperparameters,
    total_steps: int,
    grad_accum: int = 1,
    seed: int,
    on_step: Callable[[StepMetrics], bool] | None = None,
    state: TrainingState | None = None,
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM,
) -> TrainResult:
    """Train ``model`` until ``total_steps`` optimizer steps, the end of ``batches``, or ``on_step`` says stop.

    Args:
        model: A PEFT-wrapped causal LM from a backend's ``load``.
        batches: Micro-batches in training order (``Batch`` or ``(input_ids, mask)``); every ``grad_accum`` of
            them make one optimizer step. For a resumed run, start them after the ones already trained.
        hyper: Supplies the learning rate.
        total_steps: Optimizer steps in the whole run, including any taken before a resume.
        grad_accum: Micro-batches per optimizer step.
        seed: Seeds torch's RNG (LoRA dropout) on a fresh run.
        on_step: Called after each optimizer step; returning False stops training there.
        state: Optimizer, schedule and step count to resume from; a fresh one when None.
        max_grad_norm: Gradients are clipped to this total norm.

    Returns:
        The steps taken, whether ``on_step`` stopped the run, and every step's metrics.

    Raises:
        ValueError: ``grad_accum`` is below 1.
    """
    import torch

    if grad_accum < 1:
        raise ValueError(f"grad_accum must be at least 1, got {grad_accum}")
    if state is None:
        state = make_training_state(model, learning_rate=hyper.learning_rate, total_steps=total_steps)
    if state.step == 0:
        torch.manual_seed(seed)
    model.train()
    stopped = False
    for group in _groups(batches, grad_accum):
        if state.step >= total_steps:
            break
        metrics = _optimizer_step(model, group, state, total_steps=total_steps, max_grad_norm=max_grad_norm)
        state.history.append(metrics)
        if on_step is not None and on_step(metrics) is False:
            stopped = True
            break
    return TrainResult(steps=state.step, stopped=stopped, history=list(state.history))


def _groups(batches: Iterable[Batch | tuple[Any, Any]], size: int) -> Iterator[list[Batch]]:
    group: list[Batch] = []
    for item in batches:
        group.append(item if isinstance(item, Batch) else Batch(input_ids=item[0], mask=item[1]))
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _optimizer_step(
    model: Any, group: list[Batch], state: TrainingState, *, total_steps: int, max_grad_norm: float
) -> StepMetrics:
    """Accumulate the group's gradients, normalized by its target tokens, clip, and step."""
    import torch

    targets = sum(int(batch.mask[:, 1:].sum()) for batch in group)
    loss_total = 0.0
    correct = 0
    for batch in group:
        loss_sum, hits = token_loss(model, batch)
        if targets:
            (loss_sum / targets).backward()
        loss_total += float(loss_sum.detach())
        correct += hits
    params = [p for g in state.optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    learning_rate = float(state.optimizer.param_groups[0]["lr"])
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return StepMetrics(
        step=state.step,
        total_steps=total_steps,
        train_loss=loss_total / targets if targets else 0.0,
        train_mean_token_accuracy=correct / targets if targets else 0.0,
        target_tokens=targets,
        learning_rate=learning_rate,
        grad_norm=float(grad_norm),
    )


def token_loss(model: Any, batch: Batch) -> tuple[torch.Tensor, int]:
    """Return the summed cross-entropy over the batch's target tokens, and how many of them were predicted right.

    Position ``i``'s logits predict token ``i + 1``, so the target mask is shifted by one; only masked positions
    reach the cross-entropy (in fp32), so padding and prompt tokens cost nothing.
    """
    import torch

    device = next(model.parameters()).device
    input_ids = batch.input_ids.to(device)
    attention = batch.attention_mask.to(device) if batch.attention_mask is not None else None
    logits = model(input_ids=input_ids, attention_mask=attention).logits
    selected = batch.mask[:, 1:].to(device).bool()
    predicted = logits[:, :-1][selected].float()
    labels = input_ids[:, 1:][selected]
    loss_sum = torch.nn.functional.cross_entropy(predicted, labels, reduction="sum")
    hits = int((predicted.argmax(dim=-1) == labels).sum())
    return loss_sum, hits

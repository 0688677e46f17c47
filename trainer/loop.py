"""Our own training loop, shared by every backend (docs/architecture.md "Training").

AdamW on the trainable parameters, linear warmup then cosine (or linear) decay, gradient clipping, and gradient
accumulation. The loss is pluggable (an ``Objective``): supervised fine-tuning by default (``SupervisedObjective``:
cross-entropy over target tokens only, ``mask`` from ``render_chat``), DPO in ``trainer.dpo``. An objective sums
its loss over its normalizer units (target tokens, or preference pairs), and the loop divides by the units of the
whole accumulation group: the sum of losses over every micro-batch of an optimizer step, divided by their unit
count, not a mean of per-batch means. So ``grad_accum=2`` with batches of 1 takes the same step as one batch of 2,
whatever each example's length.

A fixed ``seed`` gives an identical loss curve. ``on_step`` sees each step's metrics after the optimizer step and
returns False to stop (cancel, pause, lost lease); that is checked only between optimizer steps. A resume passes
the restored ``TrainingState``, restores the RNG states (``restore_rng_state``) and hands over only the
micro-batches not trained yet.

The supervised loss applies the output head only to the positions whose next token is a target
(``target_logits``): on a small model the head over the whole vocabulary at every position is a large share of
the step.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    import torch

    from tunewright.modeling.hyperparams import ResolvedHyperparameters

DEFAULT_WARMUP_RATIO = 0.1
DEFAULT_MAX_GRAD_NORM = 1.0
DEFAULT_WEIGHT_DECAY = 0.0
CORRECT = "correct"  # the metric numerator that becomes ``train_mean_token_accuracy``

# Model types whose causal-LM forward is exactly ``lm_head(model(...).last_hidden_state)``: no logit scaling or
# soft-capping after the head, so the head may be applied to the target rows alone. Others get full logits.
_PLAIN_HEAD_MODEL_TYPES = frozenset({"gemma", "llama", "mistral", "olmo2", "phi", "phi3", "qwen2", "qwen3", "smollm3"})


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
    """What one optimizer step measured, before the step's update; losses are per normalizer unit.

    The unit is the objective's (``Objective.targets``): a target token for supervised fine-tuning, a preference
    pair for DPO. So for DPO ``train_loss`` is the mean loss per pair, ``train_mean_token_accuracy`` is the
    pairwise reward accuracy (the fraction of pairs whose chosen reward beats the rejected one), and
    ``target_tokens`` counts pairs. ``extra`` holds the objective's other per-unit means (DPO: ``reward_margin``,
    ``chosen_reward``, ``rejected_reward``); it is empty for supervised fine-tuning.
    """

    step: int  # 1-based optimizer step
    total_steps: int
    train_loss: float
    train_mean_token_accuracy: float
    target_tokens: int  # normalizer units: target tokens (supervised) or pairs (DPO)
    learning_rate: float
    grad_norm: float  # before clipping
    extra: dict[str, float] = field(default_factory=dict)


class Objective(Protocol):
    """A training loss over micro-batches, normalized by the loop across each accumulation group."""

    def targets(self, batch: Any) -> int:
        """Return the micro-batch's normalizer units (supervised: target tokens; DPO: pairs)."""
        ...

    def loss(self, model: Any, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the loss summed over the batch's units (with grad) and summed metric numerators.

        The numerator ``CORRECT`` (``"correct"``) becomes the accuracy; the others are divided by the units too
        and reported in ``StepMetrics.extra``.
        """
        ...


class SupervisedObjective:
    """Token cross-entropy over the target tokens (``token_loss``); ``correct`` counts argmax hits."""

    def targets(self, batch: Batch) -> int:
        """Return the batch's target tokens (the mask shifted by one: the first token is never predicted)."""
        return int(batch.mask[:, 1:].sum())

    def loss(self, model: Any, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the summed cross-entropy over the target tokens and ``{"correct": hits}``."""
        loss_sum, hits = token_loss(model, batch)
        return loss_sum, {CORRECT: float(hits)}


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
    batches: Iterable[Any],
    *,
    hyper: ResolvedHyperparameters,
    total_steps: int,
    grad_accum: int = 1,
    seed: int,
    on_step: Callable[[StepMetrics], bool] | None = None,
    state: TrainingState | None = None,
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM,
    objective: Objective | None = None,
) -> TrainResult:
    """Train ``model`` until ``total_steps`` optimizer steps, the end of ``batches``, or ``on_step`` says stop.

    Args:
        model: A PEFT-wrapped causal LM from a backend's ``load``.
        batches: Micro-batches in training order (any iterable, a generator over several epochs included); every
            ``grad_accum`` of them make one optimizer step. Supervised: ``Batch`` or ``(input_ids, mask)``; DPO:
            ``collate.PreferenceBatch``. For a resumed run, start them after the ones already trained
            (``state.step * grad_accum`` micro-batches); none is drawn once ``total_steps`` is reached.
        hyper: Supplies the learning rate.
        total_steps: Optimizer steps in the whole run, including any taken before a resume.
        grad_accum: Micro-batches per optimizer step.
        seed: Seeds torch's RNG (LoRA dropout) on a fresh run (``state.step == 0``); a resume restores the RNG
            states itself (``restore_rng_state``) instead.
        on_step: Called after each optimizer step; returning False stops training there.
        state: Optimizer, schedule and step count to resume from; a fresh one when None.
        max_grad_norm: Gradients are clipped to this total norm.
        objective: The loss; ``SupervisedObjective()`` when None.

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
    objective = SupervisedObjective() if objective is None else objective
    model.train()
    stopped = False
    if state.step < total_steps:
        for group in _groups(batches, grad_accum):
            metrics = _optimizer_step(model, group, state, objective, total_steps, max_grad_norm)
            state.history.append(metrics)
            if on_step is not None and on_step(metrics) is False:
                stopped = True
                break
            if state.step >= total_steps:  # checked before drawing more: a generator may do work per batch
                break
    return TrainResult(steps=state.step, stopped=stopped, history=list(state.history))


def rng_state() -> dict[str, Any]:
    """Return the RNG states a resume point saves: torch's CPU RNG, every CUDA device's (when present), ``random``.

    The values are tensors, lists and tuples of ints: ``torch.save`` / ``torch.load(weights_only=True)`` keep them.
    """
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states ``rng_state`` returned (CUDA's only when saved and CUDA is present)."""
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))  # a round trip may turn the tuple into a list


def unit_means(sums: dict[str, float], units: int) -> tuple[float, dict[str, float]]:
    """Divide summed metric numerators by the units: ``(accuracy from CORRECT, the other means)``; 0 for no units."""
    if not units:
        return 0.0, {name: 0.0 for name in sums if name != CORRECT}
    return sums.get(CORRECT, 0.0) / units, {name: value / units for name, value in sums.items() if name != CORRECT}


@dataclass(frozen=True, slots=True)
class StepGroup:
    """One optimizer step's micro-batches, given whole: ``train`` accumulates exactly these, whatever ``grad_accum``.

    The worker cuts each step's examples into micro-batches under a token budget, so steps differ in how many
    micro-batches they have; a group says where each step ends.
    """

    batches: list[Any]


def _groups(batches: Iterable[Any], size: int) -> Iterator[list[Any]]:
    group: list[Any] = []
    for item in batches:
        if isinstance(item, StepGroup):
            if group:
                yield group
                group = []
            yield item.batches
            continue
        group.append(Batch(input_ids=item[0], mask=item[1]) if isinstance(item, tuple | list) else item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _optimizer_step(
    model: Any, group: list[Any], state: TrainingState, objective: Objective, total_steps: int, max_grad_norm: float
) -> StepMetrics:
    """Accumulate the group's gradients, normalized by its units (target tokens or pairs), clip, and step."""
    import torch

    units = sum(objective.targets(batch) for batch in group)
    loss_total = 0.0
    sums: dict[str, float] = {}
    for batch in group:
        loss_sum, numerators = objective.loss(model, batch)
        if units:
            (loss_sum / units).backward()
        loss_total += float(loss_sum.detach())
        for name, value in numerators.items():
            sums[name] = sums.get(name, 0.0) + value
    params = [p for g in state.optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    learning_rate = float(state.optimizer.param_groups[0]["lr"])
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    accuracy, extra = unit_means(sums, units)
    return StepMetrics(
        step=state.step,
        total_steps=total_steps,
        train_loss=loss_total / units if units else 0.0,
        train_mean_token_accuracy=accuracy,
        target_tokens=units,
        learning_rate=learning_rate,
        grad_norm=float(grad_norm),
        extra=extra,
    )


def token_loss(model: Any, batch: Batch, *, full_logits: bool = False) -> tuple[torch.Tensor, int]:
    """Return the summed cross-entropy over the batch's target tokens, and how many of them were predicted right.

    Position ``i``'s logits predict token ``i + 1``, so the target mask is shifted by one; only masked positions
    reach the cross-entropy (in fp32), so padding and prompt tokens cost nothing. ``full_logits`` forces the
    plain forward over every position (the reference the target-only head is tested against).
    """
    import torch

    logits, labels, _ = target_logits(model, batch, full_logits=full_logits)
    loss_sum = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    hits = int((logits.detach().argmax(dim=-1) == labels).sum())
    return loss_sum, hits


def target_logits(
    model: Any, batch: Batch, *, full_logits: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the fp32 logits predicting each target token, the target ids, and the batch row of each.

    Rows are in the mask's row-major order. When the model splits into a decoder body and a plain output head
    (``_body_and_head``), the body runs over every position but the head only over the positions whose next token
    is a target, which skips most of the ``positions x vocabulary`` product; otherwise, or with ``full_logits``,
    the model's own forward computes every logit.
    """
    device = next(model.parameters()).device
    input_ids = batch.input_ids.to(device)
    attention = batch.attention_mask.to(device) if batch.attention_mask is not None else None
    selected = batch.mask[:, 1:].to(device).bool()
    labels = input_ids[:, 1:][selected]
    rows = selected.nonzero()[:, 0]
    parts = None if full_logits else _body_and_head(model)
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1][selected]
    else:
        body, head = parts
        hidden = body(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
        logits = head(hidden[:, :-1][selected])
    return logits.float(), labels, rows


def _body_and_head(model: Any) -> tuple[Any, Any] | None:
    """Return the decoder body and output head of a (PEFT-wrapped) transformers causal LM, or None.

    PEFT injects the LoRA layers in place, so the base model's modules carry the adapter (and ``disable_adapter``
    still applies); only model types known to use the head's output as is qualify.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in _PLAIN_HEAD_MODEL_TYPES:
        return None
    body = getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if body is None or head is None:
        return None
    return body, head

"""Direct Preference Optimization (Rafailov et al., 2023) as an ``Objective`` for the shared training loop.

For each pair, a sequence's log-probability is the sum of ``log p(token)`` over its output tokens (the target
mask ``collate.collate_preferences`` sets: the prompt is context only). The policy is the model with its LoRA
adapter; the reference is the same model with the adapter disabled (``model.disable_adapter()``), in the same
train/eval mode, under ``torch.no_grad()``, so no second copy of the base weights is needed. With
``r = beta * (log pi - log ref)`` for each output, the pair's loss is ``-logsigmoid(r_chosen - r_rejected)``.

A fresh adapter is the identity (LoRA's B starts at 0), so policy and reference agree exactly at step 0: every
margin is 0 and the first step's loss is ``log 2`` per pair (and no pair counts as correct yet).

Chosen and rejected sequences run in one forward: both halves are right-padded to a common width and stacked
along the batch, which costs only the padding of the shorter half.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.trainer.loop import CORRECT, Batch, SupervisedObjective, target_logits

if TYPE_CHECKING:
    import torch

    from tunewright.modeling.hyperparams import ResolvedHyperparameters
    from tunewright.trainer.collate import PreferenceBatch
    from tunewright.trainer.loop import Objective

__all__ = ["DpoObjective", "objective_for", "sequence_logprobs", "stack_pair"]


class DpoObjective:
    """The DPO loss over ``collate.PreferenceBatch`` micro-batches; its normalizer unit is the pair.

    Metric numerators (summed over pairs; the loop and ``evaluate`` divide them by the pairs): ``correct`` (chosen
    reward above the rejected one: the pairwise reward accuracy), ``reward_margin``, ``chosen_reward`` and
    ``rejected_reward``.
    """

    def __init__(self, beta: float) -> None:
        """Use ``beta``, the strength of the pull towards the reference (larger: stay closer).

        Raises:
            ValueError: ``beta`` is not positive.
        """
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.beta = beta

    def targets(self, batch: PreferenceBatch) -> int:
        """Return the number of pairs."""
        return int(batch.chosen.input_ids.shape[0])

    def loss(self, model: Any, batch: PreferenceBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the DPO loss summed over the pairs, and the summed metric numerators.

        Raises:
            TypeError: ``model`` has no ``disable_adapter`` (DPO needs a PEFT-wrapped model for its reference).
        """
        import torch

        pairs = self.targets(batch)
        both = stack_pair(batch)
        with torch.no_grad(), reference(model):
            ref = sequence_logprobs(model, both)
        policy = sequence_logprobs(model, both)
        rewards = self.beta * (policy - ref)
        margin = rewards[:pairs] - rewards[pairs:]
        loss = -torch.nn.functional.logsigmoid(margin).sum()
        rewards, margin = rewards.detach(), margin.detach()
        return loss, {
            CORRECT: float((margin > 0).sum()),
            "reward_margin": float(margin.sum()),
            "chosen_reward": float(rewards[:pairs].sum()),
            "rejected_reward": float(rewards[pairs:].sum()),
        }


def objective_for(hyper: ResolvedHyperparameters) -> Objective:
    """Return the job's objective: ``DpoObjective(beta)`` for ``method_type == "dpo"``, else supervised."""
    if hyper.method_type == "dpo":
        from tunewright.modeling.hyperparams import DEFAULT_BETA

        return DpoObjective(DEFAULT_BETA if hyper.beta is None else hyper.beta)
    return SupervisedObjective()


def reference(model: Any) -> Any:
    """Return the context manager that disables the model's LoRA adapter (the DPO reference model).

    Raises:
        TypeError: ``model`` is not PEFT-wrapped.
    """
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise TypeError("DPO needs a PEFT-wrapped model: its reference is the model with the adapter disabled")
    return disable()


def sequence_logprobs(model: Any, batch: Batch) -> torch.Tensor:
    """Return each row's summed ``log p(token)`` over its target tokens (fp32, shape ``[rows]``)."""
    import torch

    logits, labels, rows = target_logits(model, batch)
    token_logprobs = -torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    sums = torch.zeros(batch.input_ids.shape[0], dtype=token_logprobs.dtype, device=token_logprobs.device)
    return sums.index_add(0, rows, token_logprobs)


def stack_pair(batch: PreferenceBatch) -> Batch:
    """Stack the chosen rows over the rejected ones in one ``Batch``, right-padded to the wider of the two.

    The added padding has target mask 0 and attention mask 0, so its token id (0) is never seen.
    """
    import torch

    width = max(batch.chosen.input_ids.shape[1], batch.rejected.input_ids.shape[1])
    halves = [_widen(half, width) for half in (batch.chosen, batch.rejected)]
    return Batch(
        input_ids=torch.cat([h.input_ids for h in halves]),
        mask=torch.cat([h.mask for h in halves]),
        attention_mask=torch.cat([h.attention_mask for h in halves if h.attention_mask is not None]),
    )


def _widen(batch: Batch, width: int) -> Batch:
    """Right-pad ``batch`` to ``width`` columns, with an explicit attention mask (all ones when it had none)."""
    import torch

    attention = batch.attention_mask if batch.attention_mask is not None else torch.ones_like(batch.input_ids)
    extra = width - batch.input_ids.shape[1]

    def pad(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (0, extra), value=0)

    return Batch(input_ids=pad(batch.input_ids), mask=pad(batch.mask), attention_mask=pad(attention))

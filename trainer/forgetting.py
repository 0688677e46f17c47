"""The forgetting check: the loss on a fixed general probe set, for the base model and at each checkpoint.

Fine-tuning on a narrow task can cost a model what it knew before (catastrophic forgetting). The check measures
it cheaply: the mean loss on the assistant tokens of short general conversations (``probe/general.jsonl``:
writing, arithmetic, facts and instructions, written for this project), first with the adapter disabled (the
base model, once per job; the figure is kept in the resume point) and then with the adapter at each checkpoint.
A checkpoint whose probe loss is more than ``TUNEWRIGHT_FORGETTING_THRESHOLD`` (a relative increase) above the
base's gets a ``warn`` event.

The probe is rendered by the one renderer (``modeling.dataset.encode_chat``, hence ``render_chat``) with the job's
tokenizer and scored by ``evaluate`` with the supervised objective, exactly as a validation loss: batched under
the micro-batch token budget, in eval mode, without gradients, on the model already loaded. Only the first
``TUNEWRIGHT_FORGETTING_PROBE_EXAMPLES`` conversations are used (the file interleaves the four kinds, so any
prefix is balanced); the cost it adds is measured in bench/forgetting.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import msgspec

from tunewright.modeling.dataset import encode_chat
from tunewright.trainer.collate import budget_batches, collate_examples
from tunewright.trainer.evaluate import evaluate
from tunewright.trainer.loop import SupervisedObjective

if TYPE_CHECKING:
    from tunewright.trainer.loop import Batch

PROBE_PACKAGE = "tunewright.trainer"
PROBE_PATH = ("probe", "general.jsonl")


@dataclass(frozen=True, slots=True)
class Probe:
    """The probe set as micro-batches of one job's tokens.

    Attributes:
        batches: Padded micro-batches of the conversations that fit the context.
        examples: How many conversations were asked for (the figure a resumed job asks for again).
        used: How many of them fit the context and are scored.
    """

    batches: list[Batch]
    examples: int
    used: int


def probe_lines() -> list[bytes]:
    """The probe set's JSONL lines, as shipped in the package."""
    return resources.files(PROBE_PACKAGE).joinpath(*PROBE_PATH).read_bytes().splitlines()


def build_probe(tokenizer: Any, *, examples: int, context_tokens: int, micro_batch_tokens: int, pad_id: int) -> Probe:
    """Render the first ``examples`` probe conversations with the job's tokenizer and batch them.

    A conversation longer than the context is left out rather than truncated (truncation could cut its answer).

    Raises:
        ChatTemplateError: The model's chat template cannot render a plain user/assistant conversation.
    """
    tokenized = []
    for number, line in enumerate(probe_lines()[:examples], start=1):
        example = encode_chat(tokenizer, msgspec.json.decode(line), number)
        if example.length <= context_tokens and example.target_tokens > 0:
            tokenized.append(example)
    batches = budget_batches(
        tokenized, budget=micro_batch_tokens, collate=lambda chunk: collate_examples(chunk, pad_id)
    )
    return Probe(batches=batches, examples=examples, used=len(tokenized))


def probe_loss(model: Any, probe: Probe) -> float:
    """The model's mean loss per assistant token on the probe, with its adapter as it is."""
    return evaluate(model, probe.batches, SupervisedObjective()).loss


def base_probe_loss(model: Any, probe: Probe) -> float:
    """The base model's probe loss: the same model with its LoRA adapter disabled (no second copy of the weights)."""
    with model.disable_adapter():
        return probe_loss(model, probe)


def forgetting_warning(*, step: int, loss: float, base: float, threshold: float) -> str | None:
    """The warning for a checkpoint whose probe loss rose more than ``threshold`` (relative) over the base's.

    Returns:
        The event message, or None when the rise is within the threshold (or the base loss is not positive).
    """
    if base <= 0 or loss <= base * (1 + threshold):
        return None
    increase = loss / base - 1
    return (
        f"Forgetting check: at step {step} the loss on the general probe set is {loss:.4f}, {increase:.1%} above "
        f"the base model's {base:.4f} (threshold {threshold * 100:g}%); the model may have lost some general ability"
    )

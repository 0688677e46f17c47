"""A job's training plan: its files tokenized with the base model, its "auto" hyperparameters resolved.

The worker builds it before training (trainer/prepare.py) and the API builds the same one for a cost estimate
(`POST /v1/fine_tuning/jobs/estimate`), so the estimate's tokens are the ones the job bills: the same tokenizer
and chat template (``render_chat``), the same truncation to the context, the same epoch resolution. No torch
here: the tokenizer is handed in, and the model's config is read as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunewright.modeling.dataset import tokenize_dataset
from tunewright.modeling.hyperparams import base_learning_rate_for, resolve_hyperparameters, total_steps, with_resolved
from tunewright.storage.streams import blob_lines
from tunewright.training_files.validate import validate_dataset

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from tunewright.modeling.dataset import TokenizedDataset
    from tunewright.modeling.hyperparams import ResolvedHyperparameters
    from tunewright.storage.base import Stores
    from tunewright.storage.records import FileRecord
    from tunewright.storage.settings import Settings

TRUNCATION_LINES_SHOWN = 20


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    """What a job will train and bill, before any weights are loaded.

    Attributes:
        training: The tokenized training file.
        validation: The tokenized validation file, if the job has one.
        hyper: The resolved hyperparameters.
        method: The job's method with "auto" resolved (written back to the job).
        hyperparameters: The top-level hyperparameters view, likewise.
        steps_per_epoch: Optimizer steps in one epoch.
        total_steps: Optimizer steps in the whole run.
        context_tokens: The longest sequence an example may have.
    """

    training: TokenizedDataset[Any]
    validation: TokenizedDataset[Any] | None
    hyper: ResolvedHyperparameters
    method: dict[str, Any]
    hyperparameters: dict[str, Any]
    steps_per_epoch: int
    total_steps: int
    context_tokens: int

    @property
    def billed_tokens(self) -> int:
        """Training tokens the whole run bills: the training file's tokens times the epochs."""
        return self.training.billed_tokens(self.hyper.n_epochs)


def plan_training(
    training_lines: Iterable[bytes | str],
    validation_lines: Iterable[bytes | str] | None,
    tokenizer: Any,
    *,
    method: dict[str, Any],
    model_dir: Path,
    max_context_tokens: int,
) -> TrainingPlan:
    """Tokenize a job's files with its base model's tokenizer and resolve its hyperparameters.

    Args:
        training_lines: The training file's physical lines (format-valid).
        validation_lines: The validation file's, or None.
        tokenizer: The base model's tokenizer, with its chat template.
        method: The job's `method` as stored at creation ("auto" values included).
        model_dir: The base model's directory (its config gives the context length and the model family).
        max_context_tokens: ``TUNEWRIGHT_MAX_CONTEXT_TOKENS``, the cap on the context.

    Raises:
        DatasetError: An example has no target token left, or the chat template cannot render it.
    """
    method_type = str(method.get("type", "supervised"))
    context = context_tokens(model_dir, max_context_tokens)
    training = tokenize_dataset(
        training_lines, tokenizer, param="training_file", method=method_type, max_tokens=context
    )
    validation = None
    if validation_lines is not None:
        validation = tokenize_dataset(
            validation_lines, tokenizer, param="validation_file", method=method_type, max_tokens=context
        )
    hyper = resolve_hyperparameters(
        method, examples=len(training.examples), base_learning_rate=base_learning_rate_for(model_type(model_dir))
    )
    resolved_method, hyperparameters = with_resolved(method, hyper)
    per_epoch = total_steps(len(training.examples), hyper.batch_size, 1)
    return TrainingPlan(
        training=training,
        validation=validation,
        hyper=hyper,
        method=resolved_method,
        hyperparameters=hyperparameters,
        steps_per_epoch=per_epoch,
        total_steps=per_epoch * hyper.n_epochs,
        context_tokens=context,
    )


def check_large_file(
    stores: Stores, settings: Settings, file: FileRecord, *, param: str, method_type: str, line_check: Any = None
) -> None:
    """Run the full format check on a file too large to have been checked when the job was created.

    ``line_check`` is a reinforcement job's grader check (``training_files.reinforcement.ItemCheck``).

    Raises:
        DatasetError: The file breaks the format rules (the same messages the API gives).
    """
    if file.bytes <= settings.sync_validate_max_bytes:
        return
    lines = blob_lines(stores.blobs, file.blob_key)
    report = validate_dataset(lines, param=param, method=method_type, line_check=line_check)  # type: ignore[arg-type]
    report.raise_if_invalid()


def truncation_messages(plan: TrainingPlan) -> list[str]:
    """Warnings naming the lines that were cut to the context length (one per file that has any)."""
    messages = []
    for param, dataset in (("training_file", plan.training), ("validation_file", plan.validation)):
        if dataset is None or not dataset.truncated_lines:
            continue
        lines = dataset.truncated_lines
        shown = ", ".join(str(line) for line in lines[:TRUNCATION_LINES_SHOWN])
        more = f" and {len(lines) - TRUNCATION_LINES_SHOWN} more" if len(lines) > TRUNCATION_LINES_SHOWN else ""
        messages.append(
            f"{param}: {len(lines)} examples are longer than the context of {plan.context_tokens} tokens and "
            f"were truncated (lines {shown}{more})"
        )
    return messages


def context_tokens(model_dir: Path, cap: int) -> int:
    """The longest example: the model's maximum positions, capped by ``TUNEWRIGHT_MAX_CONTEXT_TOKENS``."""
    positions = _config(model_dir).get("max_position_embeddings")
    return min(cap, int(positions)) if isinstance(positions, int) and positions > 0 else cap


def model_type(model_dir: Path) -> str:
    """The model family (``config.model_type``), which picks the base learning rate."""
    return str(_config(model_dir).get("model_type", ""))


def _config(model_dir: Path) -> dict[str, Any]:
    try:
        value = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}

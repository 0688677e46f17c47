"""A claimed job's data, made ready to train: files checked, tokenized with the base model, hyperparameters resolved.

This is the worker's half of validation (docs/architecture.md "One job, start to finish", step 4): the full format
check of files too large to check when the job was created, then every token-level check, which needs the base
model's own tokenizer and chat template (truncation warnings, examples left with no target, billed tokens).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from tunewright.graders import parse_grader
from tunewright.modeling.loading import load_tokenizer
from tunewright.modeling.plan import TrainingPlan, check_large_file, plan_training
from tunewright.modeling.registry import resolve_model_dir
from tunewright.storage.streams import blob_lines
from tunewright.trainer.batching import padding_fraction, plan_batches
from tunewright.training_files.reinforcement import GRADER_PARAM, ItemCheck

if TYPE_CHECKING:
    from pathlib import Path

    from tunewright.storage.base import Stores
    from tunewright.storage.records import JobRecord
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PreparedJob(TrainingPlan):
    """The job's training plan (modeling/plan.py), with the base model's directory and tokenizer.

    Attributes:
        model_dir: The base model's local directory.
        tokenizer: Its tokenizer.
    """

    model_dir: Path
    tokenizer: Any

    def padding(self, seed: int) -> float:
        """Fraction of batch tokens that are padding in the first epoch's plan."""
        lengths = self.training.lengths
        return padding_fraction(lengths, plan_batches(lengths, batch_size=self.hyper.batch_size, seed=seed, epoch=0))


def prepare(stores: Stores, settings: Settings, job: JobRecord) -> PreparedJob:
    """Check and tokenize the job's files with its base model and resolve its hyperparameters.

    Raises:
        DatasetError: A file breaks a format rule or an example has no target token left.
        UnknownModelError, ModelUnavailableError: The base model is not configured or not on this machine.
        ChatTemplateError: The base model's template cannot render these examples.
    """
    method_type = str(job.method.get("type", "supervised"))
    training_file = stores.metadata.get_file(job.training_file, project_id=job.project_id)
    validation_file = (
        stores.metadata.get_file(job.validation_file, project_id=job.project_id) if job.validation_file else None
    )
    line_check = job_item_check(job.method)
    check_large_file(
        stores, settings, training_file, param="training_file", method_type=method_type, line_check=line_check
    )
    if validation_file is not None:
        check_large_file(
            stores, settings, validation_file, param="validation_file", method_type=method_type, line_check=line_check
        )
    model_dir = resolve_model_dir(job.base_model, settings)
    tokenizer = load_tokenizer(model_dir)
    plan = plan_training(
        blob_lines(stores.blobs, training_file.blob_key),
        blob_lines(stores.blobs, validation_file.blob_key) if validation_file is not None else None,
        tokenizer,
        method=job.method,
        model_dir=model_dir,
        max_context_tokens=settings.max_context_tokens,
    )
    return PreparedJob(
        model_dir=model_dir, tokenizer=tokenizer, **{f.name: getattr(plan, f.name) for f in fields(plan)}
    )


def job_item_check(method: dict[str, Any]) -> ItemCheck | None:
    """A reinforcement job's check of each line against its grader's item templates (None for other methods)."""
    if method.get("type") != "reinforcement":
        return None
    return ItemCheck(parse_grader(method["reinforcement"]["grader"], param=GRADER_PARAM))


def summary_message(prepared: PreparedJob, seed: int) -> str:
    """The event stating what the job will train and bill."""
    training = prepared.training
    hyper = prepared.hyper
    valid = ""
    if prepared.validation is not None:
        valid = f"; validation: {counted(len(prepared.validation.examples), 'example')}"
    if hyper.method_type == "reinforcement":
        billed = (
            f"Training {counted(hyper.n_epochs, 'epoch')} over {counted(training.total_tokens, 'prompt token')}; "
            "each step bills the tokens it samples and trains on; batch size "
        )
    else:
        billed = (
            f"Training {counted(hyper.n_epochs, 'epoch')} x {counted(training.total_tokens, 'token')} = "
            f"{prepared.billed_tokens} billed training tokens; batch size "
        )
    return (
        f"Files validated: {counted(len(training.examples), 'training example')}, "
        f"{counted(training.total_tokens, 'token')}{valid}. {billed}"
        f"{hyper.batch_size}, learning rate multiplier {hyper.learning_rate_multiplier:g}, "
        f"{counted(prepared.total_steps, 'step')}. Batches are grouped by length: "
        f"{prepared.padding(seed):.1%} of batch tokens are padding."
    )


def counted(number: int, noun: str) -> str:
    """`1 epoch`, `2 epochs`: a count with its noun in the right number."""
    return f"{number} {noun}{'' if number == 1 else 's'}"

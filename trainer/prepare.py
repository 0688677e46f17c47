"""A claimed job's data, made ready to train: files checked, tokenized with the base model, hyperparameters resolved.

This is the worker's half of validation (docs/architecture.md "One job, start to finish", step 4): the full format
check of files too large to check when the job was created, then every token-level check, which needs the base
model's own tokenizer and chat template (truncation warnings, examples left with no target, billed tokens).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunewright.modeling.loading import load_tokenizer
from tunewright.modeling.registry import resolve_model_dir
from tunewright.trainer.batching import padding_fraction, plan_batches
from tunewright.trainer.data import tokenize_dataset
from tunewright.trainer.hyperparams import (
    base_learning_rate_for,
    resolve_hyperparameters,
    total_steps,
    with_resolved,
)
from tunewright.training_files.validate import validate_dataset

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tunewright.storage.base import Stores
    from tunewright.storage.records import FileRecord, JobRecord
    from tunewright.storage.settings import Settings
    from tunewright.trainer.data import TokenizedDataset
    from tunewright.trainer.hyperparams import ResolvedHyperparameters

logger = logging.getLogger(__name__)

TRUNCATION_LINES_SHOWN = 20


@dataclass(frozen=True, slots=True)
class PreparedJob:
    """Everything training needs that does not depend on the model's weights.

    Attributes:
        model_dir: The base model's local directory.
        tokenizer: Its tokenizer.
        training: The tokenized training file.
        validation: The tokenized validation file, if the job has one.
        hyper: The resolved hyperparameters.
        method: The job's method with "auto" resolved (written back to the job).
        hyperparameters: The top-level hyperparameters view, likewise.
        steps_per_epoch: Optimizer steps in one epoch.
        total_steps: Optimizer steps in the whole run.
        context_tokens: The longest sequence an example may have.
    """

    model_dir: Path
    tokenizer: Any
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

    def padding(self, seed: int) -> float:
        """Fraction of batch tokens that are padding in the first epoch's plan."""
        lengths = self.training.lengths
        return padding_fraction(lengths, plan_batches(lengths, batch_size=self.hyper.batch_size, seed=seed, epoch=0))


def check_large_file(stores: Stores, settings: Settings, file: FileRecord, *, param: str, method_type: str) -> None:
    """Run the full format check on a file too large to have been checked when the job was created.

    Raises:
        DatasetError: The file breaks the format rules (the same messages the API gives).
    """
    if file.bytes <= settings.sync_validate_max_bytes:
        return
    report = validate_dataset(blob_lines(stores, file.blob_key), param=param, method=method_type)  # type: ignore[arg-type]
    report.raise_if_invalid()


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
    check_large_file(stores, settings, training_file, param="training_file", method_type=method_type)
    if validation_file is not None:
        check_large_file(stores, settings, validation_file, param="validation_file", method_type=method_type)
    model_dir = resolve_model_dir(job.base_model, settings)
    tokenizer = load_tokenizer(model_dir)
    context = context_tokens(model_dir, settings.max_context_tokens)
    training = tokenize_dataset(
        blob_lines(stores, training_file.blob_key),
        tokenizer,
        param="training_file",
        method=method_type,
        max_tokens=context,
    )
    validation = None
    if validation_file is not None:
        validation = tokenize_dataset(
            blob_lines(stores, validation_file.blob_key),
            tokenizer,
            param="validation_file",
            method=method_type,
            max_tokens=context,
        )
    hyper = resolve_hyperparameters(
        job.method, examples=len(training.examples), base_learning_rate=base_learning_rate_for(model_type(model_dir))
    )
    method, hyperparameters = with_resolved(job.method, hyper)
    per_epoch = total_steps(len(training.examples), hyper.batch_size, 1)
    return PreparedJob(
        model_dir=model_dir,
        tokenizer=tokenizer,
        training=training,
        validation=validation,
        hyper=hyper,
        method=method,
        hyperparameters=hyperparameters,
        steps_per_epoch=per_epoch,
        total_steps=per_epoch * hyper.n_epochs,
        context_tokens=context,
    )


def summary_message(prepared: PreparedJob, seed: int) -> str:
    """The event stating what the job will train and bill."""
    training = prepared.training
    hyper = prepared.hyper
    valid = ""
    if prepared.validation is not None:
        valid = f"; validation: {counted(len(prepared.validation.examples), 'example')}"
    return (
        f"Files validated: {counted(len(training.examples), 'training example')}, "
        f"{counted(training.total_tokens, 'token')}{valid}. Training {counted(hyper.n_epochs, 'epoch')} x "
        f"{counted(training.total_tokens, 'token')} = {prepared.billed_tokens} billed training tokens; batch size "
        f"{hyper.batch_size}, learning rate multiplier {hyper.learning_rate_multiplier:g}, "
        f"{counted(prepared.total_steps, 'step')}. Batches are grouped by length: "
        f"{prepared.padding(seed):.1%} of batch tokens are padding."
    )


def counted(number: int, noun: str) -> str:
    """`1 epoch`, `2 epochs`: a count with its noun in the right number."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def truncation_messages(prepared: PreparedJob) -> list[str]:
    """Warnings naming the lines that were cut to the context length (one per file that has any)."""
    messages = []
    for param, dataset in (("training_file", prepared.training), ("validation_file", prepared.validation)):
        if dataset is None or not dataset.truncated_lines:
            continue
        lines = dataset.truncated_lines
        shown = ", ".join(str(line) for line in lines[:TRUNCATION_LINES_SHOWN])
        more = f" and {len(lines) - TRUNCATION_LINES_SHOWN} more" if len(lines) > TRUNCATION_LINES_SHOWN else ""
        messages.append(
            f"{param}: {len(lines)} examples are longer than the context of {prepared.context_tokens} tokens and "
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


def blob_lines(stores: Stores, key: str) -> Iterator[bytes]:
    """Yield a blob's physical lines (with their line ends), streaming; a long line is joined once, not rescanned."""
    partial: list[bytes] = []
    for chunk in stores.blobs.open(key):
        start = 0
        end = chunk.find(b"\n")
        while end != -1:
            partial.append(chunk[start : end + 1])
            yield b"".join(partial)
            partial.clear()
            start = end + 1
            end = chunk.find(b"\n", start)
        if start < len(chunk):
            partial.append(chunk[start:])
    if partial:
        yield b"".join(partial)

"""What a job leaves for its users: adapters in the blob store, checkpoints, the results CSV, the model names.

Adapters are stored in the standard PEFT layout under a prefix (``adapter_config.json`` +
``adapter_model.safetensors``), so PEFT and vLLM load them unchanged. Every blob a row will point to is
recorded as an intent before it is written; the row's own transaction ends the intent, so a crash in between
leaves a blob the sweeper removes rather than one nothing points to.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from tunewright.storage.errors import Conflict, NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.keys import adapter_blob_prefix, file_blob_key
from tunewright.storage.records import CheckpointRecord, FileRecord, ModelRecord

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from tunewright.storage.base import Stores
    from tunewright.storage.records import JobRecord
    from tunewright.trainer.backends.base import TrainingBackend
    from tunewright.trainer.resume import StepRecord

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
RESULTS_FILENAME = "step_metrics.csv"
RESULTS_COLUMNS = (
    "step",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "probe_loss",
    "probe_loss_base",
    "best_checkpoint",
)
REWARD_COLUMNS = ("train_reward_mean", "valid_reward_mean")
KEEP_LAST_CHECKPOINTS = 3


def model_name(job: JobRecord, organization_slug: str) -> str:
    """Return the fine-tuned model's name: ``ft:<base>:<org>:<suffix>:<slot>`` (empty suffix when none)."""
    return f"ft:{job.base_model}:{organization_slug}:{job.suffix or ''}:{job.model_slot}"


def checkpoint_name(job: JobRecord, organization_slug: str, step: int) -> str:
    """Return a checkpoint's model name: the fine-tuned model's name and ``:ckpt-step-<step>``."""
    return f"{model_name(job, organization_slug)}:ckpt-step-{step}"


def upload_adapter(stores: Stores, backend: TrainingBackend, model: Any, prefix: str) -> list[str]:
    """Save the model's adapter and put its files under ``prefix``; return their keys (intents still open)."""
    keys: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tunewright-adapter-") as tmp:
        directory = Path(tmp)
        backend.save_adapter(model, directory)
        for name in ADAPTER_FILES:
            key = f"{prefix}/{name}"
            stores.metadata.begin_blob(key, now=int(time.time()))
            keys.append(key)
            with (directory / name).open("rb") as fh:
                stores.blobs.put(key, fh)
    return keys


def copy_adapter(stores: Stores, source: str, prefix: str) -> list[str]:
    """Copy the adapter stored under ``source`` to ``prefix``; return the new keys (intents still open).

    Raises:
        NotFound: The source adapter is gone (its checkpoint model was deleted).
    """
    keys: list[str] = []
    for name in ADAPTER_FILES:
        key = f"{prefix}/{name}"
        stores.metadata.begin_blob(key, now=int(time.time()))
        keys.append(key)
        stores.blobs.concat(key, [f"{source}/{name}"])
    return keys


def download_adapter(stores: Stores, prefix: str, directory: Path) -> Path:
    """Copy an adapter's PEFT files from the blob store into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        with (directory / name).open("wb") as fh:
            for chunk in stores.blobs.open(f"{prefix}/{name}"):
                fh.write(chunk)
    return directory


def publish_checkpoint(
    stores: Stores,
    backend: TrainingBackend,
    model: Any,
    *,
    job: JobRecord,
    organization_slug: str,
    step: int,
    metrics: dict[str, float],
) -> CheckpointRecord:
    """Store the adapter as it is at ``step`` and publish it as a checkpoint with its callable model."""
    prefix = adapter_blob_prefix(job.project_id, job.id, f"ckpt-step-{step}")
    keys = upload_adapter(stores, backend, model, prefix)
    now = int(time.time())
    name = checkpoint_name(job, organization_slug, step)
    checkpoint = CheckpointRecord(
        id=new_id("checkpoint"),
        job_id=job.id,
        project_id=job.project_id,
        created_at=now,
        step_number=step,
        fine_tuned_model_checkpoint=name,
        metrics=metrics,
        blob_key=prefix,
    )
    model_record = fine_tuned_model_record(job, organization_slug, name=name, prefix=prefix, kind="checkpoint")
    try:
        stores.metadata.add_checkpoint(checkpoint, model_record, published_blobs=keys)
    except Conflict:
        # Published before a crash: the existing row owns these (rewritten, identical) blobs.
        for key in keys:
            stores.metadata.end_blob(key)
        raise
    return checkpoint


def fine_tuned_model_record(
    job: JobRecord, organization_slug: str, *, name: str, prefix: str, kind: str
) -> ModelRecord:
    """Return the model row of a job's adapter stored under ``prefix``."""
    return ModelRecord(
        id=name,
        project_id=job.project_id,
        organization_id=job.organization_id,
        created=int(time.time()),
        owned_by=organization_slug,
        base_model=job.base_model,
        job_id=job.id,
        adapter_key=prefix,
        kind=kind,
    )


def checkpoints_to_drop(kept: Sequence[tuple[int, float | None]], keep_last: int = KEEP_LAST_CHECKPOINTS) -> set[int]:
    """Return the steps of checkpoints to delete: all but the last ``keep_last`` and the best validation loss.

    Args:
        kept: ``(step, full validation loss or None)`` of every published checkpoint, oldest first.
        keep_last: How many of the newest to keep.
    """
    steps = [step for step, _ in kept]
    keep = set(steps[-keep_last:])
    scored = [(loss, step) for step, loss in kept if loss is not None]
    if scored:
        keep.add(min(scored)[1])
    return set(steps) - keep


def drop_checkpoint(stores: Stores, *, project_id: str, checkpoint_id: str, prefix: str) -> None:
    """Delete a checkpoint row (its model and permissions go with it), then its adapter blobs.

    A checkpoint whose model the user deleted through `/v1/models` is gone already (row and blobs): not an error.
    """
    try:
        stores.metadata.delete_checkpoint(checkpoint_id, project_id=project_id)
    except NotFound:
        logger.info("checkpoint %s was deleted with its model already", checkpoint_id)
    stores.blobs.delete_prefix(prefix + "/")


def discard_checkpoints(stores: Stores, *, project_id: str, job_id: str) -> int:
    """Delete every checkpoint of a cancelled job (a cancelled job keeps nothing as a model); return how many."""
    dropped = 0
    while True:
        page = stores.metadata.list_checkpoints(job_id, project_id=project_id, after=None, limit=100)
        for checkpoint in page.items:
            drop_checkpoint(stores, project_id=project_id, checkpoint_id=checkpoint.id, prefix=checkpoint.blob_key)
            dropped += 1
        if not page.has_more:
            return dropped


def results_csv(
    steps: Sequence[StepRecord],
    *,
    probe_loss_base: float | None = None,
    best_step: int | None = None,
    rewards: bool = False,
) -> bytes:
    """Return the results file: one row per optimizer step, empty cells where a step measured nothing.

    OpenAI's five columns come first; Tunewright's follow: ``probe_loss`` and ``probe_loss_base`` (the forgetting
    check, on checkpoint rows), ``best_checkpoint`` (``1`` on the row of the checkpoint early stopping
    published as the fine-tuned model) and, in a reinforcement job's file (``rewards``), ``train_reward_mean`` and
    ``valid_reward_mean``.

    Args:
        steps: Each optimizer step's metrics, in order.
        probe_loss_base: The base model's probe loss, written beside each measured ``probe_loss``.
        best_step: The step of the published best checkpoint, if any.
        rewards: Add the reward columns (a reinforcement job).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULTS_COLUMNS + (REWARD_COLUMNS if rewards else ()))
    for row in steps:
        measured = row.probe_loss is not None
        cells = [
            row.step,
            _number(row.train_loss),
            _number(row.train_accuracy),
            _number(row.valid_loss),
            _number(row.valid_mean_token_accuracy),
            _number(row.probe_loss),
            _number(probe_loss_base if measured else None),
            "1" if row.step == best_step else "",
        ]
        if rewards:
            cells += [_number(row.train_reward_mean), _number(row.valid_reward_mean)]
        writer.writerow(cells)
    return out.getvalue().encode()


def store_results_file(
    stores: Stores,
    job: JobRecord,
    steps: Sequence[StepRecord],
    *,
    probe_loss_base: float | None = None,
    best_step: int | None = None,
) -> FileRecord:
    """Put the results CSV in the blob store (intent open) and return its File row, not yet inserted."""
    rewards = job.method.get("type") == "reinforcement"
    data = results_csv(steps, probe_loss_base=probe_loss_base, best_step=best_step, rewards=rewards)
    return store_result_file(stores, job.project_id, RESULTS_FILENAME, io.BytesIO(data), line_count=len(steps) + 1)


def store_result_file(
    stores: Stores,
    project_id: str,
    filename: str,
    content: BinaryIO | Iterable[bytes],
    *,
    line_count: int | None = None,
) -> FileRecord:
    """Put a file of purpose ``fine-tune-results`` in the blob store, streaming (intent open); return its File row.

    The row is not inserted: the transaction that publishes what it belongs to (a job's end, an export's) does it.
    """
    file_id = new_id("file")
    key = file_blob_key(project_id, file_id)
    stores.metadata.begin_blob(key, now=int(time.time()))
    stored = stores.blobs.put(key, content)
    return FileRecord(
        id=file_id,
        project_id=project_id,
        bytes=stored.size,
        created_at=int(time.time()),
        filename=filename,
        purpose="fine-tune-results",
        blob_key=key,
        sha256=stored.sha256,
        line_count=line_count,
    )


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"

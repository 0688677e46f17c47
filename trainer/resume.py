"""Resume points: everything a job needs to go on after a pause, a released lease or a dead worker.

A resume point holds the adapter's weights, the optimizer and schedule states, the RNG states and a
``TrainingProgress`` (steps done, each step's metrics for the results file, the published checkpoints, the
forgetting check's base figure, early stopping's best loss and patience count); fields added later have defaults,
so a resume point written before them still loads. Billed tokens are not kept here: each step's usage row is
written with its metrics event (storage/queue.py). A resume point is private to the job: one blob per job,
replaced by each save (a blob put is atomic on every store), deleted when the job ends. Because batches are
planned from the job seed and the epoch (``batching.plan_batches``), restoring the step count is enough to replay
the data order of an uninterrupted run.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from tunewright.storage.errors import NotFound
from tunewright.trainer.early_stopping import EarlyStoppingState

if TYPE_CHECKING:
    from tunewright.storage.base import BlobStore
    from tunewright.trainer.loop import TrainingState

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class StepRecord(msgspec.Struct, kw_only=True, array_like=True):
    """One optimizer step's metrics, as the results CSV lists them."""

    step: int
    train_loss: float
    train_accuracy: float
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    probe_loss: float | None = None  # at checkpoints, with the forgetting check on
    train_reward_mean: float | None = None  # reinforcement jobs only, as the next one
    valid_reward_mean: float | None = None


class PublishedCheckpoint(msgspec.Struct, kw_only=True):
    """A checkpoint published at an epoch end: which step, its id, and its full validation loss (for keeping)."""

    step: int
    checkpoint_id: str
    valid_loss: float | None = None


class TrainingProgress(msgspec.Struct, kw_only=True):
    """How far a job got; saved with every resume point.

    Attributes:
        step: Optimizer steps done.
        steps: Each step's metrics, in order.
        checkpoints: The published checkpoints still kept.
        resumes: How many times the job has been resumed.
        probe_loss_base: The base model's loss on the forgetting check's probe set, measured once per job.
        probe_examples: How many probe conversations it was measured on (a resumed job scores the same ones).
        early_stopping: The best full validation loss so far and the evaluations since it last improved.
    """

    step: int = 0
    steps: list[StepRecord] = msgspec.field(default_factory=list)
    checkpoints: list[PublishedCheckpoint] = msgspec.field(default_factory=list)
    resumes: int = 0
    probe_loss_base: float | None = None
    probe_examples: int | None = None
    early_stopping: EarlyStoppingState = msgspec.field(default_factory=EarlyStoppingState)


class ResumePoint(msgspec.Struct, kw_only=True):
    """A loaded resume point: the progress and the tensors' state dicts."""

    progress: TrainingProgress
    adapter: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def save_resume_point(
    blobs: BlobStore, key: str, *, model: Any, state: TrainingState, progress: TrainingProgress, rng: dict[str, Any]
) -> int:
    """Write a resume point to ``key`` (replacing the previous one); return its size in bytes."""
    import torch
    from peft import get_peft_model_state_dict

    payload = {
        "version": FORMAT_VERSION,
        "progress": msgspec.json.encode(progress),
        "adapter": {name: tensor.detach().cpu() for name, tensor in get_peft_model_state_dict(model).items()},
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": rng,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    buffer.seek(0)
    info = blobs.put(key, buffer)
    logger.info("saved resume point at step %d (%d bytes) to %s", progress.step, info.size, key)
    return info.size


def load_resume_point(blobs: BlobStore, key: str) -> ResumePoint | None:
    """Read the resume point at ``key``, or None when the job has none (or it is unreadable: start afresh).

    Only tensors and plain values are unpickled (``weights_only=True``): a blob store is data, not code.
    """
    import torch

    try:
        raw = b"".join(blobs.open(key))
    except NotFound:
        return None
    try:
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        if payload.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown resume point version {payload.get('version')!r}")
        progress = msgspec.json.decode(payload["progress"], type=TrainingProgress)
    except Exception:  # a torn or foreign blob must not wedge the job: it restarts from step 0 instead
        logger.exception("unreadable resume point %s; the job starts again from the beginning", key)
        return None
    return ResumePoint(
        progress=progress,
        adapter=payload["adapter"],
        optimizer=payload["optimizer"],
        scheduler=payload["scheduler"],
        rng=payload["rng"],
    )


def restore(model: Any, state: TrainingState, point: ResumePoint) -> None:
    """Load a resume point's adapter weights, optimizer and schedule into a freshly built model and state."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, point.adapter)
    state.optimizer.load_state_dict(point.optimizer)
    state.scheduler.load_state_dict(point.scheduler)
    state.step = point.progress.step


def delete_resume_point(blobs: BlobStore, key: str) -> None:
    """Remove a job's resume point once the job has ended (a missing one is fine)."""
    try:
        blobs.delete(key)
    except Exception:  # the job's outcome stands; a leftover resume point only costs space
        logger.exception("could not delete resume point %s", key)

"""``run_job``: one claimed job from its files to its fine-tuned model.

docs/architecture.md "One job, start to finish" describes the steps and "Crash safety" what survives a crash.

The recipe, one named function per step: check and tokenize the data, move the job to ``running``, load the
model (continuing the adapter of an ``ft:`` model or checkpoint model, or a resume point), train, then finish
according to how training stopped: publish the model, keep a resume point for a pause or a worker stop, or leave
quietly when the job was cancelled or the lease lost.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from tunewright.modeling.chat import ChatTemplateError
from tunewright.modeling.modules import UnknownTargetModulesError, check_target_modules
from tunewright.modeling.plan import truncation_messages
from tunewright.modeling.registry import ModelUnavailableError, UnknownModelError, packaged_model_pending
from tunewright.storage.errors import DatabaseUnavailable, NotFound
from tunewright.storage.keys import adapter_blob_prefix
from tunewright.storage.records import JobStatus, ThroughputRecord
from tunewright.trainer.collate import pad_id_of
from tunewright.trainer.prepare import prepare, summary_message
from tunewright.trainer.publish import (
    checkpoint_name,
    copy_adapter,
    discard_checkpoints,
    download_adapter,
    fine_tuned_model_record,
    model_name,
    store_results_file,
    upload_adapter,
)
from tunewright.trainer.resume import TrainingProgress, delete_resume_point, load_resume_point, restore
from tunewright.trainer.session import Session
from tunewright.training_files.errors import DatasetError

if TYPE_CHECKING:
    from tunewright.trainer.backends.base import TrainingBackend
    from tunewright.trainer.prepare import PreparedJob
    from tunewright.trainer.session import JobHandle

logger = logging.getLogger(__name__)


class LeaseLostError(Exception):
    """The job is no longer this worker's: cancelled, paused, or taken over after an expired lease."""


class ParentModelGoneError(Exception):
    """The ``ft:`` model a job continues no longer exists for its project."""


def run_job(handle: JobHandle, backend: TrainingBackend, *, device: str) -> str:
    """Run a claimed job until it ends or stops; return the outcome.

    Returns:
        ``succeeded``, ``failed``, ``paused``, ``cancelled``, ``released`` (the worker is stopping), ``lost``,
        or ``interrupted`` (the worker is stopping while the database is unavailable).
    """
    try:
        return _run_job(handle, backend, device=device)
    except DatabaseUnavailable as exc:
        # The worker's stores wait an outage out and give up only when the worker is stopping: the job stays as
        # it is, its lease expires, and it resumes from its last resume point.
        logger.warning("job %s left to its lease: %s", handle.job.id, exc, extra={"job_id": handle.job.id})
        return "interrupted"


def _run_job(handle: JobHandle, backend: TrainingBackend, *, device: str) -> str:
    try:
        if too_many_attempts(handle):
            return fail(handle, "too_many_attempts", "The job's worker stopped unexpectedly too many times.")
        prepared = prepare_data(handle)
        if handle.stop_requested.is_set():
            return release_before_training(handle)
        session = start_session(handle, prepared, backend, device=device)
        train_session(session)
        return finish(session)
    except LeaseLostError:
        return stopped_outcome(handle)
    except DatabaseUnavailable:
        raise  # not the job's fault: see run_job
    except DatasetError as exc:
        return fail(handle, **exc.to_error())
    except (UnknownModelError, ModelUnavailableError) as exc:
        return fail(handle, "model_not_available", f"The base model '{handle.job.base_model}' is not available: {exc}")
    except UnknownTargetModulesError as exc:  # the API checks them when the model's files are on its machine
        param = f"method.{handle.job.method['type']}.hyperparameters.lora_target_modules"
        return fail(handle, "invalid_value", str(exc), param=param)
    except ParentModelGoneError as exc:
        message = f"The model `{exc}` the job continues was deleted, or is no longer shared with this project."
        return fail(handle, "model_not_found", message, param="model")
    except ChatTemplateError as exc:
        return fail(
            handle,
            "invalid_training_file",
            f"training_file cannot be rendered with the model's chat template: {exc}",
            param="training_file",
        )
    except Exception:
        logger.exception("job %s failed", handle.job.id, extra={"job_id": handle.job.id})
        return fail(
            handle, "internal_error", "The fine-tuning job failed because of an internal error; see the server log."
        )


def too_many_attempts(handle: JobHandle) -> bool:
    """A running job reclaimed after its worker died more times than allowed: it is failing the workers."""
    return handle.claim.status == JobStatus.RUNNING and handle.claim.attempt > handle.settings.max_job_attempts


def prepare_data(handle: JobHandle) -> PreparedJob:
    """Validate and tokenize the files, then write the resolved hyperparameters and the `running` status."""
    job = handle.job
    fresh = job.status == JobStatus.VALIDATING_FILES
    if fresh:
        files = ", ".join(f for f in (job.training_file, job.validation_file) if f)
        _event(handle, f"Validating training file: {files}")
    if packaged_model_pending(job.base_model, handle.settings):
        # The import takes a minute or so (another process may be running it): say why nothing moves meanwhile.
        _event(handle, f"Preparing base model {job.base_model} (one-time import); the job continues when it is ready")
    prepared = prepare(handle.stores, handle.settings, job)
    events = []
    if fresh:
        events.append(handle.event(summary_message(prepared, job.seed)))
        events.extend(handle.event(message, level="warn") for message in truncation_messages(prepared))
    if not handle.stores.queue.update(
        handle.claim,
        status=JobStatus.RUNNING,
        events=events,
        method=prepared.method,
        hyperparameters=prepared.hyperparameters,
    ):
        raise LeaseLostError
    return prepared


def start_session(handle: JobHandle, prepared: PreparedJob, backend: TrainingBackend, *, device: str) -> Session:
    """Load the model with its adapter (continued, fresh or resumed) and build the optimizer state."""
    from tunewright.trainer.dpo import objective_for
    from tunewright.trainer.loop import make_training_state, restore_rng_state

    hyper = prepared.hyper
    with tempfile.TemporaryDirectory(prefix="tunewright-parent-") as tmp:
        parent = parent_adapter(handle, Path(tmp))
        if parent is not None:
            hyper = msgspec.structs.replace(hyper, **parent_lora_settings(parent))
        check_target_modules(prepared.model_dir, hyper.lora_target_modules, handle.job.base_model)
        model, _ = backend.load(prepared.model_dir, hyper, seed=handle.job.seed, device=device)
        if parent is not None:
            load_adapter_weights(model, parent)
    state = make_training_state(model, learning_rate=hyper.learning_rate, total_steps=prepared.total_steps)
    if hyper.method_type == "reinforcement":
        from tunewright.trainer.rft import job_objective

        objective = job_objective(handle.job.method, handle.settings, hyper, model, prepared.tokenizer)
    else:
        objective = objective_for(hyper)
    session = Session(
        handle=handle,
        prepared=prepared,
        backend=backend,
        model=model,
        state=state,
        objective=objective,
        progress=TrainingProgress(),
        pad_id=pad_id_of(prepared.tokenizer),
    )
    point = load_resume_point(handle.stores.blobs, handle.resume_key)
    if point is not None and point.progress.step <= prepared.total_steps:
        restore(model, state, point)
        restore_rng_state(point.rng)
        session.progress = point.progress
        session.progress.resumes += 1
        _event(handle, f"Resumed from step {point.progress.step}/{prepared.total_steps}")
    elif handle.job.status == JobStatus.VALIDATING_FILES:
        _event(handle, "Fine-tuning job started")
    else:
        _event(handle, f"Fine-tuning job started again from step 0 (attempt {handle.claim.attempt})")
    session.start_step = session.progress.step
    session.last_resume_step = session.progress.step
    session.prepare_validation()
    session.prepare_probe()
    return session


def train_session(session: Session) -> None:
    """Run the shared loop over the remaining steps; ``session.stop_reason`` says why it stopped early."""
    from tunewright.trainer.loop import train

    if session.progress.step >= session.prepared.total_steps or session.stopped_early:
        return
    train(
        session.model,
        session.groups(),
        hyper=session.prepared.hyper,
        total_steps=session.prepared.total_steps,
        seed=session.handle.job.seed,
        on_step=session.on_step,
        state=session.state,
        objective=session.objective,
    )


def finish(session: Session) -> str:
    """End the session according to why training stopped; return the outcome."""
    handle = session.handle
    if session.stop_reason == "stop":
        session.save_resume_point()
        message = (
            f"The worker is stopping: the job goes back to the queue and resumes from step {session.progress.step}"
        )
        released = handle.stores.queue.release(handle.claim, status=JobStatus.QUEUED, event=handle.event(message))
        return "released" if released else stopped_outcome(handle, session)
    if session.stop_reason not in (None, "early_stop"):
        return stopped_outcome(handle, session)
    return publish(session)


def release_before_training(handle: JobHandle) -> str:
    """The worker is stopping before training began: give the job back as it is (its resume point, if any, stays)."""
    message = "The worker is stopping: the job goes back to the queue before training"
    released = handle.stores.queue.release(handle.claim, status=JobStatus.QUEUED, event=handle.event(message))
    return "released" if released else stopped_outcome(handle)


def stopped_outcome(handle: JobHandle, session: Session | None = None) -> str:
    """After the lease was refused: keep a resume point for a pause, nothing for a cancel; return the outcome."""
    status = handle.stores.metadata.get_job(handle.job.id, project_id=handle.job.project_id).status
    if status == JobStatus.PAUSED:
        if session is not None:
            if session.unwritten_step is not None:
                # Before the resume point: a crash in between replays the step, and it is billed once.
                handle.stores.metadata.keep_paused_step(*session.unwritten_step)
                session.finish_cut_epoch_end()
            session.save_resume_point()
            handle.stores.metadata.add_event(handle.event(f"Saved the job's progress at step {session.progress.step}"))
        return "paused"
    if status == JobStatus.CANCELLED:
        delete_resume_point(handle.stores.blobs, handle.resume_key)
        discard_checkpoints(handle.stores, project_id=handle.job.project_id, job_id=handle.job.id)
        return "cancelled"
    return "lost"


def publish(session: Session) -> str:
    """Store the final adapter and the results file, then complete the job with its model, in one transaction.

    With early stopping, the final adapter is a copy of the best checkpoint's (the lowest full validation loss),
    named as the job's `best_checkpoint`.
    """
    handle = session.handle
    job = handle.job
    prefix = adapter_blob_prefix(job.project_id, job.id, "final")
    best_step = session.best_step
    keys = copy_best_checkpoint(session, best_step, prefix) if best_step is not None else None
    if keys is None:
        best_step = None
        keys = upload_adapter(handle.stores, session.backend, session.model, prefix)
    progress = session.progress
    results = store_results_file(
        handle.stores, job, progress.steps, probe_loss_base=progress.probe_loss_base, best_step=best_step
    )
    name = model_name(job, handle.organization_slug)
    model = fine_tuned_model_record(job, handle.organization_slug, name=name, prefix=prefix, kind="fine-tune")
    done = handle.stores.queue.complete(
        handle.claim,
        status=JobStatus.SUCCEEDED,
        event=handle.event("The job has successfully completed"),
        files=[results],
        models=[model],
        published_blobs=keys,
        fine_tuned_model=name,
        best_checkpoint=None if best_step is None else checkpoint_name(job, handle.organization_slug, best_step),
        result_files=[results.id],
        estimated_finish=None,
        error=None,
    )
    if not done:
        return stopped_outcome(handle)
    delete_resume_point(handle.stores.blobs, handle.resume_key)
    record_throughput(session)
    return "succeeded"


def copy_best_checkpoint(session: Session, step: int, prefix: str) -> list[str] | None:
    """Copy the adapter of the checkpoint at ``step`` to ``prefix``; None when that checkpoint was deleted.

    Returns:
        The copied keys (intents open), or None: the user deleted the checkpoint's model before the job ended, and
        the job publishes its current adapter instead (an event says so).
    """
    handle = session.handle
    job = handle.job
    loss = session.progress.early_stopping.best_loss
    source = adapter_blob_prefix(job.project_id, job.id, f"ckpt-step-{step}")
    try:
        keys = copy_adapter(handle.stores, source, prefix)
    except NotFound:
        message = (
            f"The best checkpoint (step {step}) was deleted before the job ended: the fine-tuned model is the "
            f"adapter as of step {session.progress.step} instead"
        )
        handle.stores.metadata.add_event(handle.event(message, level="warn"))
        return None
    message = f"The fine-tuned model is the checkpoint at step {step}, the lowest full validation loss ({loss:.4f})"
    handle.stores.metadata.add_event(handle.event(message))
    return keys


def record_throughput(session: Session) -> None:
    """Keep the tokens this session trained and how long it ran, for the cost estimate's duration.

    Best effort: the job has succeeded already, so a failure here is logged, never the job's.
    """
    handle = session.handle
    job = handle.job
    try:
        usage = handle.stores.metadata.list_training_usage(job.id, project_id=job.project_id)
        tokens = sum(row.trained_tokens for row in usage if row.step > session.start_step)
        seconds = time.monotonic() - session.started
        if tokens > 0 and seconds > 0:
            record = ThroughputRecord(
                job_id=job.id, base_model=job.base_model, tokens=tokens, seconds=seconds, finished_at=int(time.time())
            )
            handle.stores.metadata.record_throughput(record)
    except Exception:
        logger.exception("could not record the throughput of job %s", job.id, extra={"job_id": job.id})


def fail(handle: JobHandle, code: str, message: str, param: str | None = None) -> str:
    """Complete the job as failed with ``error = {code, message, param}``; the steps it trained stay billed."""
    error = {"code": code, "message": message, "param": param}
    done = handle.stores.queue.complete(
        handle.claim,
        status=JobStatus.FAILED,
        event=handle.event(message, level="error"),
        error=error,
        estimated_finish=None,
    )
    if not done:
        return stopped_outcome(handle)
    delete_resume_point(handle.stores.blobs, handle.resume_key)
    return "failed"


def parent_adapter(handle: JobHandle, directory: Path) -> Path | None:
    """For a job continuing an ``ft:`` model, fetch that model's adapter into ``directory``.

    The model is a fine-tuned or checkpoint model the job's project owns or was granted, as the API checked.

    Raises:
        ParentModelGoneError: it was deleted (or its permission revoked) since the job was created.
    """
    job = handle.job
    if not job.model.startswith("ft:"):
        return None
    try:
        record = handle.stores.metadata.get_model(job.model, project_id=job.project_id)
        return download_adapter(handle.stores, record.adapter_key, directory)
    except NotFound:
        raise ParentModelGoneError(job.model) from None


def parent_lora_settings(adapter_dir: Path) -> dict[str, Any]:
    """The LoRA shape of a parent adapter: a continued job trains the same rank on the same modules."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    targets = config.get("target_modules")
    return {
        "lora_rank": int(config["r"]),
        "lora_alpha": float(config["lora_alpha"]),
        "lora_target_modules": sorted(targets) if isinstance(targets, list) else targets,
    }


def load_adapter_weights(model: Any, adapter_dir: Path) -> None:
    """Load a saved adapter's weights into the freshly wrapped model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(adapter_dir / "adapter_model.safetensors")))


def _event(handle: JobHandle, message: str) -> None:
    handle.stores.metadata.add_event(handle.event(message))

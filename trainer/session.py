"""One training session of a claimed job: the model, the data order, and what happens after every step.

A session starts from step 0 or from the job's resume point, feeds the shared loop one group of micro-batches
per optimizer step (the epoch's length-grouped plan, cut into micro-batches under a token budget), and after each
step records the metrics, writes the metrics event under the job's lease, publishes a checkpoint at each epoch
end (with the forgetting check's probe loss, ``trainer.forgetting``), saves a resume point every N steps or T
seconds, and stops when the job was paused or cancelled, the lease was lost, the worker was asked to stop, or
early stopping saw the validation loss stop improving (``trainer.early_stopping``).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunewright.modeling.chat import ChatTemplateError
from tunewright.storage.errors import Conflict
from tunewright.storage.events import make_event
from tunewright.storage.keys import adapter_blob_prefix, resume_blob_key
from tunewright.storage.records import TrainingUsageRecord
from tunewright.trainer.batching import plan_batches
from tunewright.trainer.collate import budget_groups, collate_examples, collate_preferences
from tunewright.trainer.early_stopping import observe, should_stop
from tunewright.trainer.forgetting import base_probe_loss, build_probe, forgetting_warning, probe_loss
from tunewright.trainer.loop import StepGroup
from tunewright.trainer.publish import checkpoints_to_drop, drop_checkpoint, publish_checkpoint
from tunewright.trainer.resume import PublishedCheckpoint, StepRecord, save_resume_point

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from tunewright.storage.base import Stores
    from tunewright.storage.records import Claim, JobRecord
    from tunewright.storage.settings import Settings
    from tunewright.trainer.backends.base import TrainingBackend
    from tunewright.trainer.forgetting import Probe
    from tunewright.trainer.loop import Batch, StepMetrics, TrainingState
    from tunewright.trainer.prepare import PreparedJob
    from tunewright.trainer.resume import TrainingProgress

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class JobHandle:
    """A job as a worker holds it: the stores, its claim, its record and its owner's slug."""

    settings: Settings
    stores: Stores
    claim: Claim
    job: JobRecord
    organization_slug: str
    stop_requested: Any  # threading.Event: the worker was asked to stop (SIGTERM)
    lease_lost: Any  # threading.Event: the heartbeat found the lease gone

    def event(self, message: str, *, level: str = "info", kind: str = "message", data: Any = None) -> Any:
        """Return a new event of this job."""
        return make_event(self.job.id, self.job.project_id, message, level=level, kind=kind, data=data)

    @property
    def resume_key(self) -> str:
        """Where this job's resume point lives."""
        return resume_blob_key(self.job.project_id, self.job.id)


@dataclass(slots=True)
class Session:
    """A model being trained for a job, and the bookkeeping around each step."""

    handle: JobHandle
    prepared: PreparedJob
    backend: TrainingBackend
    model: Any
    state: TrainingState
    objective: Any
    progress: TrainingProgress
    pad_id: int
    validation_full: list[Any] = field(default_factory=list)
    validation_sample: list[Any] = field(default_factory=list)
    probe: Probe | None = None
    stop_reason: str | None = None
    unwritten_step: tuple[Any, TrainingUsageRecord] | None = None
    cut_epoch_end: tuple[StepMetrics, dict[str, float]] | None = None
    started: float = field(default_factory=time.monotonic)
    start_step: int = 0
    last_resume_save: float = field(default_factory=time.monotonic)
    last_resume_step: int = 0
    _plans: dict[int, list[list[int]]] = field(default_factory=dict)

    # --- data order ---------------------------------------------------------------------------------

    def plan(self, epoch: int) -> list[list[int]]:
        """The epoch's batches of example indices (seeded by the job seed and the epoch)."""
        if epoch not in self._plans:
            lengths = self.prepared.training.lengths
            self._plans = {
                epoch: plan_batches(
                    lengths, batch_size=self.prepared.hyper.batch_size, seed=self.handle.job.seed, epoch=epoch
                )
            }
        return self._plans[epoch]

    def groups(self) -> Iterator[StepGroup]:
        """Yield each remaining optimizer step's micro-batches, from the step after ``progress.step``."""
        per_epoch = self.prepared.steps_per_epoch
        first = self.progress.step
        for epoch in range(first // per_epoch, self.prepared.hyper.n_epochs):
            skip = first - epoch * per_epoch if epoch == first // per_epoch else 0
            for offset, indices in enumerate(self.plan(epoch)[skip:]):
                step = epoch * per_epoch + skip + offset + 1
                examples = [self.prepared.training.examples[i] for i in indices]
                yield StepGroup(self.micro_batches(examples, step=step))

    def micro_batches(self, examples: Sequence[Any], *, step: int = 0) -> list[Batch]:
        """Cut one step's examples (longest first) into padded micro-batches under the token budget.

        A reinforcement prompt counts as ``group_size`` rows of its prompt and the longest completion, and its
        micro-batch carries a seed of the job, the 1-based ``step`` and its place in the step.
        """
        hyper = self.prepared.hyper
        rows, extra = 1, 0
        if hyper.method_type == "dpo":
            rows = 2
        elif hyper.method_type == "reinforcement":
            rows, extra = self.objective.group_size, self.objective.max_completion_tokens
        groups = budget_groups(examples, budget=self.handle.settings.micro_batch_tokens, rows=rows, extra=extra)
        return [self.collate(group, seed=self.sample_seed(step, index)) for index, group in enumerate(groups)]

    def sample_seed(self, step: int, index: int) -> int:
        """The seed of a reinforcement micro-batch's completions: the same on a replay of the step."""
        return (self.handle.job.seed * 1_000_003 + step * 1_009 + index) % 2**63

    def collate(self, examples: Sequence[Any], *, seed: int = 0) -> Any:
        """Pad examples into the objective's batch type (a reinforcement batch keeps its prompts and seed)."""
        if self.prepared.hyper.method_type == "dpo":
            return collate_preferences(examples, self.pad_id)
        if self.prepared.hyper.method_type == "reinforcement":
            from tunewright.trainer.rft import RftBatch

            return RftBatch(examples=list(examples), seed=seed)
        return collate_examples(examples, self.pad_id)

    def tokens_of_step(self, step: int) -> int:
        """Billable tokens of the examples trained at 1-based optimizer ``step``."""
        per_epoch = self.prepared.steps_per_epoch
        indices = self.plan((step - 1) // per_epoch)[(step - 1) % per_epoch]
        return sum(self.prepared.training.examples[i].total_tokens for i in indices)

    def prepare_validation(self) -> None:
        """Batch the validation file once: all of it for epoch ends, a seeded sample for every N steps.

        A reinforcement job keeps ``eval_samples`` validation prompts (a seeded sample) instead.
        """
        if self.prepared.validation is None:
            return
        examples = list(self.prepared.validation.examples)
        if self.prepared.hyper.method_type == "reinforcement":
            count = min(len(examples), self.prepared.hyper.eval_samples or len(examples))
            rng = random.Random(f"tunewright.validation:{self.handle.job.seed}")  # noqa: S311 - a sample, not a secret
            self.validation_sample = rng.sample(examples, count)
            return
        self.validation_full = self._eval_batches(examples)
        count = min(len(examples), self.handle.settings.eval_sample_examples)
        rng = random.Random(f"tunewright.validation:{self.handle.job.seed}")  # noqa: S311 - a sample, not a secret
        self.validation_sample = self._eval_batches(rng.sample(examples, count))

    def _eval_batches(self, examples: list[Any]) -> list[Any]:
        batches: list[Any] = []
        ordered = sorted(examples, key=lambda example: -example.length)
        step = max(1, self.prepared.hyper.batch_size)
        for start in range(0, len(ordered), step):
            batches.extend(self.micro_batches(ordered[start : start + step]))
        return batches

    def prepare_probe(self) -> None:
        """Batch the forgetting check's probe set and measure the base model on it, once per job.

        The base figure goes into the progress, so a resumed job keeps it (and scores as many probe conversations
        as it was measured on, whatever the setting says now). A model that cannot render the probe skips the
        check with an event; the job goes on.
        """
        if not self.prepared.hyper.forgetting_check:
            return
        handle = self.handle
        examples = self.progress.probe_examples or handle.settings.forgetting_probe_examples
        try:
            probe = build_probe(
                self.prepared.tokenizer,
                examples=examples,
                context_tokens=self.prepared.context_tokens,
                micro_batch_tokens=handle.settings.micro_batch_tokens,
                pad_id=self.pad_id,
            )
        except ChatTemplateError as exc:
            self._event(f"Forgetting check skipped: the base model's chat template cannot render the probe set ({exc})")
            return
        if not probe.batches:
            context = self.prepared.context_tokens
            self._event(f"Forgetting check skipped: no probe conversation fits the context of {context} tokens")
            return
        self.probe = probe
        if self.progress.probe_loss_base is None:
            base = base_probe_loss(self.model, probe)
            self.progress.probe_loss_base = base
            self.progress.probe_examples = examples
            self._event(
                f"Forgetting check: the base model's loss on the general probe set ({probe.used} conversations) "
                f"is {base:.4f}"
            )

    def probe_metrics(self) -> dict[str, float]:
        """The forgetting check's figures at a checkpoint: the probe loss now and the base model's."""
        base = self.progress.probe_loss_base
        if self.probe is None or base is None:
            return {}
        return {"probe_loss": probe_loss(self.model, self.probe), "probe_loss_base": base}

    @property
    def stopped_early(self) -> bool:
        """Whether early stopping has run out of patience (possibly in an earlier session of the job)."""
        patience = self.prepared.hyper.early_stopping_patience
        return patience is not None and should_stop(self.progress.early_stopping, patience)

    @property
    def best_step(self) -> int | None:
        """With early stopping, the step of the checkpoint with the lowest full validation loss so far."""
        if self.prepared.hyper.early_stopping_patience is None:
            return None
        return self.progress.early_stopping.best_step

    # --- after each step ----------------------------------------------------------------------------

    def on_step(self, metrics: StepMetrics) -> bool:
        """Record a finished optimizer step; return False to stop training (see the module docstring)."""
        handle = self.handle
        self.progress.step = metrics.step
        epoch_end = metrics.step % self.prepared.steps_per_epoch == 0 or metrics.step == self.prepared.total_steps
        valid = self.validate(metrics.step, epoch_end=epoch_end)
        if epoch_end:
            valid.update(self.probe_metrics())
        record = StepRecord(
            step=metrics.step,
            train_loss=metrics.train_loss,
            train_accuracy=metrics.train_mean_token_accuracy,
            valid_loss=valid.get("valid_loss"),
            valid_mean_token_accuracy=valid.get("valid_mean_token_accuracy"),
            probe_loss=valid.get("probe_loss"),
            train_reward_mean=metrics.extra.get("train_reward_mean"),
            valid_reward_mean=valid.get("valid_reward_mean"),
        )
        self.progress.steps.append(record)
        event = self.metrics_event(metrics, valid)
        usage = self.step_usage(metrics.step)
        held = handle.stores.queue.update(
            handle.claim, events=[event], usage=usage, estimated_finish=self.estimated_finish()
        )
        if not held:
            # A pause keeps this step: its event and usage are written with the resume point, and the work of an
            # epoch end it cut short is done then (`finish_cut_epoch_end`).
            self.unwritten_step = (event, usage)
            self.cut_epoch_end = (metrics, valid) if epoch_end else None
            self.stop_reason = "lost"
            return False
        if epoch_end and self.end_epoch(metrics, valid):
            self.save_resume_point()  # it says the job stopped early: a resumed job goes straight to publishing
            self.stop_reason = "early_stop"
            return False
        if handle.stop_requested.is_set():
            self.stop_reason = "stop"
            return False
        if handle.lease_lost.is_set():
            self.stop_reason = "lost"
            return False
        if (epoch_end or self.resume_due(metrics.step)) and metrics.step < self.prepared.total_steps:
            self.save_resume_point()
        return True

    def step_usage(self, step: int) -> TrainingUsageRecord:
        """The training usage of 1-based optimizer ``step``: the tokens of the examples it trained on.

        A reinforcement step bills what it sampled (validation samples and model graders' calls included) and the
        prompt and completion tokens it trained on.
        """
        job = self.handle.job
        take = getattr(self.objective, "take_tokens", None)
        tokens = sum(take()) if take is not None else self.tokens_of_step(step)
        return TrainingUsageRecord(
            job_id=job.id,
            step=step,
            project_id=job.project_id,
            model=job.model,
            base_model=job.base_model,
            trained_tokens=tokens,
            created_at=int(time.time()),
        )

    def validate(self, step: int, *, epoch_end: bool) -> dict[str, float]:
        """Validation metrics for this step: the whole file at an epoch end, a sample every N steps."""
        from tunewright.trainer.evaluate import evaluate

        if self.prepared.hyper.method_type == "reinforcement":
            return self.validate_rewards(step)
        every = self.handle.settings.eval_every_steps
        values: dict[str, float] = {}
        if self.validation_full and epoch_end:
            full = evaluate(self.model, self.validation_full, self.objective)
            values.update(full_valid_loss=full.loss, full_valid_mean_token_accuracy=full.mean_token_accuracy)
            values.update(valid_loss=full.loss, valid_mean_token_accuracy=full.mean_token_accuracy)
        elif self.validation_sample and every and step % every == 0:
            sample = evaluate(self.model, self.validation_sample, self.objective)
            values.update(valid_loss=sample.loss, valid_mean_token_accuracy=sample.mean_token_accuracy)
        return values

    def observe_validation(self, step: int, valid: dict[str, float]) -> bool:
        """Feed a checkpoint's full validation loss to early stopping; return True when the job should stop now."""
        hyper = self.prepared.hyper
        loss = valid.get("full_valid_loss")
        if hyper.early_stopping_patience is None or loss is None:
            return False
        self.progress.early_stopping = observe(
            self.progress.early_stopping, step=step, loss=loss, min_delta=hyper.early_stopping_min_delta
        )
        return self.stopped_early and step < self.prepared.total_steps

    def end_epoch(self, metrics: StepMetrics, values: dict[str, float]) -> bool:
        """Publish the epoch's checkpoint and feed early stopping; return True (and say so) when the job stops here."""
        self.checkpoint(metrics, values)
        if not self.observe_validation(metrics.step, values):
            return False
        state = self.progress.early_stopping
        delta = self.prepared.hyper.early_stopping_min_delta
        by = f" by more than {delta:g}" if delta else ""
        evaluations = f"{state.since_improvement} evaluation{'' if state.since_improvement == 1 else 's'}"
        self._event(
            f"Early stopping at step {metrics.step}/{self.prepared.total_steps}: the full validation loss has not"
            f" improved{by} for {evaluations} (best {state.best_loss:.4f} at step {state.best_step})"
        )
        return True

    def finish_cut_epoch_end(self) -> None:
        """Do the epoch-end work of a step a pause cut short: its checkpoint and its early-stopping evaluation.

        The resume point saved next then holds both, as an uninterrupted run would (the resumed job goes on from
        the next step).
        """
        if self.cut_epoch_end is not None:
            metrics, values = self.cut_epoch_end
            self.cut_epoch_end = None
            self.end_epoch(metrics, values)

    def validate_rewards(self, step: int) -> dict[str, float]:
        """A reinforcement job's validation metrics: every ``eval_interval`` steps and at the last step.

        The mean reward of one seeded sample per kept validation prompt (and each sub-grader's, for a multi grader).
        """
        interval = self.prepared.hyper.eval_interval or 1
        if not self.validation_sample or (step % interval and step != self.prepared.total_steps):
            return {}
        stats = self.objective.evaluate(
            self.model,
            self.validation_sample,
            seed=self.sample_seed(step, 10_000),
            batch_size=max(1, self.prepared.hyper.batch_size),
        )
        return stats.means("valid")

    def metrics_event(self, metrics: StepMetrics, valid: dict[str, float]) -> Any:
        """The step's `metrics` event, in OpenAI's shape."""
        data: dict[str, Any] = {
            "step": metrics.step,
            "train_loss": metrics.train_loss,
            "train_mean_token_accuracy": metrics.train_mean_token_accuracy,
            "total_steps": metrics.total_steps,
            **valid,
            **getattr(metrics, "extra", {}),
        }
        message = f"Step {metrics.step}/{metrics.total_steps}: training loss={metrics.train_loss:.4f}"
        if "valid_loss" in valid:
            message += f", validation loss={valid['valid_loss']:.4f}"
        if "reward_margin" in data:
            message += f", reward margin={data['reward_margin']:.4f}"
        if "probe_loss" in valid:
            message += f", probe loss={valid['probe_loss']:.4f}"
        if "train_reward_mean" in data:
            message += f", mean reward={data['train_reward_mean']:.4f}"
        if "valid_reward_mean" in data:
            message += f", validation mean reward={data['valid_reward_mean']:.4f}"
        return self.handle.event(message, kind="metrics", data=data)

    def estimated_finish(self) -> int:
        """When the job should finish, from this session's pace so far."""
        done = self.progress.step - self.start_step
        elapsed = time.monotonic() - self.started
        remaining = self.prepared.total_steps - self.progress.step
        return int(time.time() + (elapsed / done) * remaining) if done > 0 else int(time.time())

    def resume_due(self, step: int) -> bool:
        """Whether a resume point is due: N steps or T seconds since the last one."""
        settings = self.handle.settings
        return (
            step - self.last_resume_step >= settings.resume_every_steps
            or time.monotonic() - self.last_resume_save >= settings.resume_every_s
        )

    def save_resume_point(self) -> None:
        """Write the job's resume point as of now."""
        from tunewright.trainer.loop import rng_state

        save_resume_point(
            self.handle.stores.blobs,
            self.handle.resume_key,
            model=self.model,
            state=self.state,
            progress=self.progress,
            rng=rng_state(),
        )
        self.last_resume_step = self.progress.step
        self.last_resume_save = time.monotonic()

    def checkpoint(self, metrics: StepMetrics, valid: dict[str, float]) -> None:
        """Publish the adapter as a checkpoint at an epoch end and drop the ones no longer kept."""
        handle = self.handle
        step = metrics.step
        if any(kept.step == step for kept in self.progress.checkpoints):
            return  # published before a crash that this run replayed
        values = {
            "step": float(step),
            "train_loss": metrics.train_loss,
            "train_mean_token_accuracy": metrics.train_mean_token_accuracy,
            **valid,
        }
        try:
            record = publish_checkpoint(
                handle.stores,
                self.backend,
                self.model,
                job=handle.job,
                organization_slug=handle.organization_slug,
                step=step,
                metrics=values,
            )
        except Conflict:
            logger.info("checkpoint at step %d of %s exists already", step, handle.job.id)
            return
        self.progress.checkpoints.append(
            PublishedCheckpoint(step=step, checkpoint_id=record.id, valid_loss=valid.get("full_valid_loss"))
        )
        self._event(f"Checkpoint created at step {step}")
        if "probe_loss" in valid:
            warning = forgetting_warning(
                step=step,
                loss=valid["probe_loss"],
                base=valid["probe_loss_base"],
                threshold=handle.settings.forgetting_threshold,
            )
            if warning is not None:
                self._event(warning, level="warn")
        self.drop_old_checkpoints()

    def drop_old_checkpoints(self) -> None:
        """Keep the last three checkpoints and the one with the best full validation loss."""
        handle = self.handle
        drop = checkpoints_to_drop([(kept.step, kept.valid_loss) for kept in self.progress.checkpoints])
        for kept in [kept for kept in self.progress.checkpoints if kept.step in drop]:
            prefix = adapter_blob_prefix(handle.job.project_id, handle.job.id, f"ckpt-step-{kept.step}")
            try:
                drop_checkpoint(
                    handle.stores, project_id=handle.job.project_id, checkpoint_id=kept.checkpoint_id, prefix=prefix
                )
            except Exception:  # a checkpoint that outlives its turn costs space, not correctness
                logger.exception("could not drop checkpoint %s of %s", kept.checkpoint_id, handle.job.id)
                continue
            self.progress.checkpoints.remove(kept)

    def _event(self, message: str, *, level: str = "info") -> None:
        self.handle.stores.metadata.add_event(self.handle.event(message, level=level))

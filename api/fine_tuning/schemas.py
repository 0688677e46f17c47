"""Wire objects of /v1/fine_tuning, mirroring OpenAI's schemas field for field."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from tunewright.api.schemas import Request, Response
from tunewright.storage.records import JobStatus

if TYPE_CHECKING:
    from tunewright.storage.records import (
        CheckpointRecord,
        ExportRecord,
        JobEventRecord,
        JobListingRecord,
        JobRecord,
        PermissionRecord,
    )

Auto = Literal["auto"]
BatchSize = Auto | Annotated[int, Meta(ge=1, le=256)]
MAX_LEARNING_RATE_MULTIPLIER = 10.0
"""OpenAI sets no upper bound; ours keeps the learning rate (a family's base rate, 1e-3 or 2e-3, times the
multiplier) at most 0.02, already far past where LoRA trains, and refuses the huge values (1e308, and `1e999`,
which JSON decoding reads as infinity) that would end the job in non-finite weights."""
LearningRateMultiplier = Auto | Annotated[float, Meta(gt=0, le=MAX_LEARNING_RATE_MULTIPLIER)]
NEpochs = Auto | Annotated[int, Meta(ge=1, le=50)]
Beta = Auto | Annotated[float, Meta(gt=0, le=2)]
ComputeMultiplier = Auto | Annotated[float, Meta(gt=0.00001, le=10)]
EvalInterval = Auto | Annotated[int, Meta(ge=1)]
EvalSamples = Auto | Annotated[int, Meta(ge=1)]
ReasoningEffort = Literal["default", "low", "medium", "high"]
Suffix = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Seed = Annotated[int, Meta(ge=0, le=2_147_483_647)]
ModuleName = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")]
"""A module's dotted name or suffix (`q_proj`, `self_attn.q_proj`), as PEFT matches it; nothing path-like."""
TargetModules = Literal["all-linear"] | Annotated[list[ModuleName], Meta(min_length=1, max_length=64)]


class LoraHyperparameters(Request):
    """Tunewright's LoRA extensions, accepted in `method.<type>.hyperparameters` and the legacy `hyperparameters`."""

    lora_rank: Annotated[int, Meta(ge=1, le=256)] | UnsetType = UNSET
    lora_alpha: Annotated[float, Meta(gt=0, le=4096)] | UnsetType = UNSET
    lora_dropout: Annotated[float, Meta(ge=0, lt=1)] | UnsetType = UNSET
    lora_target_modules: TargetModules | UnsetType = UNSET


class ExtensionHyperparameters(LoraHyperparameters):
    """Tunewright's extensions: the LoRA settings, the forgetting check and early stopping (openai-compatibility.md)."""

    forgetting_check: bool | UnsetType = UNSET
    early_stopping_patience: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    early_stopping_min_delta: Annotated[float, Meta(ge=0)] | UnsetType = UNSET


class Hyperparameters(ExtensionHyperparameters):
    """The legacy top-level `hyperparameters` (deprecated by OpenAI in favour of `method`) plus the extensions."""

    batch_size: BatchSize | UnsetType = UNSET
    learning_rate_multiplier: LearningRateMultiplier | UnsetType = UNSET
    n_epochs: NEpochs | UnsetType = UNSET


class SupervisedHyperparameters(ExtensionHyperparameters):
    """`FineTuneSupervisedHyperparameters` plus the extensions."""

    batch_size: BatchSize | UnsetType = UNSET
    learning_rate_multiplier: LearningRateMultiplier | UnsetType = UNSET
    n_epochs: NEpochs | UnsetType = UNSET


class DPOHyperparameters(ExtensionHyperparameters):
    """`FineTuneDPOHyperparameters` plus the extensions."""

    beta: Beta | UnsetType = UNSET
    batch_size: BatchSize | UnsetType = UNSET
    learning_rate_multiplier: LearningRateMultiplier | UnsetType = UNSET
    n_epochs: NEpochs | UnsetType = UNSET


class ReinforcementHyperparameters(ExtensionHyperparameters):
    """`FineTuneReinforcementHyperparameters` plus the extensions (early stopping is refused: no validation loss).

    `reasoning_effort` is accepted and echoed; it has no effect on the (non-reasoning) models trained here.
    """

    batch_size: BatchSize | UnsetType = UNSET
    learning_rate_multiplier: LearningRateMultiplier | UnsetType = UNSET
    n_epochs: NEpochs | UnsetType = UNSET
    reasoning_effort: ReasoningEffort | UnsetType = UNSET
    compute_multiplier: ComputeMultiplier | UnsetType = UNSET
    eval_interval: EvalInterval | UnsetType = UNSET
    eval_samples: EvalSamples | UnsetType = UNSET


class SupervisedMethod(Request):
    """`FineTuneSupervisedMethod`."""

    hyperparameters: SupervisedHyperparameters | UnsetType = UNSET


class DPOMethod(Request):
    """`FineTuneDPOMethod`."""

    hyperparameters: DPOHyperparameters | UnsetType = UNSET


class ReinforcementMethod(Request):
    """`FineTuneReinforcementMethod`: the grader (decoded by `tunewright.graders.parse_grader`) and hyperparameters."""

    grader: dict[str, Any]
    hyperparameters: ReinforcementHyperparameters | UnsetType = UNSET


class FineTuneMethod(Request):
    """`FineTuneMethod`: the training method and its hyperparameters."""

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | UnsetType = UNSET
    dpo: DPOMethod | UnsetType = UNSET
    reinforcement: ReinforcementMethod | UnsetType = UNSET


class WandbSettings(Request):
    """Settings of a Weights and Biases integration."""

    project: str
    name: str | None | UnsetType = UNSET
    entity: str | None | UnsetType = UNSET
    tags: list[str] | UnsetType = UNSET


class FineTuningIntegration(Request):
    """One entry of `integrations`."""

    type: Literal["wandb"]
    wandb: WandbSettings


class CreateFineTuningJobRequest(Request):
    """Body of `POST /v1/fine_tuning/jobs`."""

    model: Annotated[str, Meta(min_length=1)]
    training_file: Annotated[str, Meta(min_length=1)]
    hyperparameters: Hyperparameters | UnsetType = UNSET
    suffix: Suffix | None | UnsetType = UNSET
    validation_file: str | None | UnsetType = UNSET
    integrations: list[FineTuningIntegration] | None | UnsetType = UNSET
    seed: Seed | None | UnsetType = UNSET
    method: FineTuneMethod | UnsetType = UNSET
    metadata: dict[str, str] | None | UnsetType = UNSET


class CreateFineTuningCheckpointPermissionRequest(Request):
    """Body of `POST /v1/fine_tuning/checkpoints/{model}/permissions`."""

    project_ids: Annotated[list[str], Meta(min_length=1, max_length=100)]


ExportFormat = Literal["adapter", "merged", "gguf"]
ExportDtype = Literal["f16", "bf16", "f32"]
ExportQuantization = Literal["f16", "q8_0"]


class CreateFineTuningExportRequest(Request):
    """Body of `POST /v1/fine_tuning/jobs/{id}/exports` (Tunewright's): which model to export, in which form.

    `dtype` applies to `merged` only (default: the base model's), `quantization` to `gguf` only (default `f16`).
    """

    format: ExportFormat
    checkpoint: Annotated[str, Meta(min_length=1)] | None | UnsetType = UNSET
    dtype: ExportDtype | None | UnsetType = UNSET
    quantization: ExportQuantization | None | UnsetType = UNSET


class FineTuningJobError(Response):
    """Why a job failed."""

    code: str
    message: str
    param: str | None


class FineTuningJob(Response):
    """`FineTuningJob` (`object: "fine_tuning.job"`); every required field is always present."""

    id: str
    created_at: int
    error: FineTuningJobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    seed: int
    integrations: list[dict[str, Any]] | None = None
    estimated_finish: int | None | UnsetType = UNSET
    method: dict[str, Any] | UnsetType = UNSET
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    best_checkpoint: str | None = None  # Tunewright's: the checkpoint early stopping published as the model
    object: Literal["fine_tuning.job"] = "fine_tuning.job"

    @classmethod
    def from_record(cls, record: JobRecord) -> FineTuningJob:
        """The mapping from a JobRecord to the wire (`from_listing` is the same for list pages)."""
        return cls(
            id=record.id,
            created_at=record.created_at,
            error=_job_error(record.error),
            fine_tuned_model=record.fine_tuned_model,
            finished_at=record.finished_at,
            hyperparameters=record.hyperparameters,
            model=record.model,
            organization_id=record.organization_id,
            result_files=list(record.result_files),
            status=record.status,
            trained_tokens=record.trained_tokens,
            training_file=record.training_file,
            validation_file=record.validation_file,
            seed=record.seed,
            integrations=record.integrations if record.integrations is not None else [],
            estimated_finish=record.estimated_finish if record.status == JobStatus.RUNNING else UNSET,
            method=record.method or UNSET,
            metadata=record.metadata,
            user_provided_suffix=record.suffix,
            best_checkpoint=record.best_checkpoint,
        )

    @classmethod
    def from_listing(cls, listing: JobListingRecord) -> FineTuningJob:
        """`from_record` for a list page's row: its JSON text goes to the wire as it is (`msgspec.Raw`).

        The fields typed as objects then hold `Raw`; msgspec encodes it without looking. Encoded, the two
        mappings give the same JSON (tests/unit/test_job_listing.py).
        """
        method = listing.method
        return cls(
            id=listing.id,
            created_at=listing.created_at,
            error=_job_error(msgspec.json.decode(listing.error)) if listing.error is not None else None,
            fine_tuned_model=listing.fine_tuned_model,
            finished_at=listing.finished_at,
            hyperparameters=msgspec.Raw(listing.hyperparameters),  # type: ignore[arg-type]
            model=listing.model,
            organization_id=listing.organization_id,
            result_files=msgspec.Raw(listing.result_files),  # type: ignore[arg-type]
            status=listing.status,
            trained_tokens=listing.trained_tokens,
            training_file=listing.training_file,
            validation_file=listing.validation_file,
            seed=listing.seed,
            integrations=msgspec.Raw(listing.integrations) if listing.integrations is not None else [],  # type: ignore[arg-type]
            estimated_finish=listing.estimated_finish if listing.status == JobStatus.RUNNING else UNSET,
            method=msgspec.Raw(method) if method not in _EMPTY_OBJECTS else UNSET,  # type: ignore[arg-type]
            metadata=msgspec.Raw(listing.metadata) if listing.metadata is not None else None,  # type: ignore[arg-type]
            user_provided_suffix=listing.suffix,
            best_checkpoint=listing.best_checkpoint,
        )


_EMPTY_OBJECTS = frozenset({"{}", "null", ""})
"""JSON text of a `method` the wire leaves out (`from_record`: `record.method or UNSET`)."""


def _job_error(error: dict[str, Any] | None) -> FineTuningJobError | None:
    """A job's stored error as the wire shows it (None when it has none)."""
    if not error:
        return None
    return FineTuningJobError(
        code=str(error.get("code") or "error"),
        message=str(error.get("message") or ""),
        param=error.get("param"),
    )


class FineTuningJobEvent(Response):
    """`FineTuningJobEvent` (`object: "fine_tuning.job.event"`)."""

    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] | UnsetType = UNSET
    data: dict[str, Any] | UnsetType = UNSET
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"

    @classmethod
    def from_record(cls, record: JobEventRecord) -> FineTuningJobEvent:
        """The only mapping from a JobEventRecord to the wire."""
        return cls(
            id=record.id,
            created_at=record.created_at,
            level=record.level,  # type: ignore[arg-type]
            message=record.message,
            type=record.type,  # type: ignore[arg-type]
            data=record.data if record.data is not None else {},
        )


class FineTuningJobCheckpoint(Response):
    """`FineTuningJobCheckpoint` (`object: "fine_tuning.job.checkpoint"`)."""

    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict[str, float]
    fine_tuning_job_id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"

    @classmethod
    def from_record(cls, record: CheckpointRecord) -> FineTuningJobCheckpoint:
        """The only mapping from a CheckpointRecord to the wire."""
        return cls(
            id=record.id,
            created_at=record.created_at,
            fine_tuned_model_checkpoint=record.fine_tuned_model_checkpoint,
            step_number=record.step_number,
            metrics=record.metrics,
            fine_tuning_job_id=record.job_id,
        )


class FineTuningCheckpointPermission(Response):
    """`FineTuningCheckpointPermission` (`object: "checkpoint.permission"`)."""

    id: str
    created_at: int
    project_id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"

    @classmethod
    def from_record(cls, record: PermissionRecord) -> FineTuningCheckpointPermission:
        """The only mapping from a PermissionRecord to the wire."""
        return cls(id=record.id, created_at=record.created_at, project_id=record.project_id)


class EstimatedCost(Response):
    """A cost estimate in dollars."""

    value: float
    currency: Literal["usd"] = "usd"


class FineTuningJobEstimate(Response):
    """`POST /v1/fine_tuning/jobs/estimate` (Tunewright's): what a job would train, bill and take."""

    model: str
    training_file: str
    validation_file: str | None
    method: dict[str, Any]
    n_epochs: int
    examples: int
    tokens_per_epoch: int
    trained_tokens: int
    estimated_cost: EstimatedCost
    estimated_duration_seconds: int
    within_spend_limit: bool
    warnings: list[str]
    object: Literal["fine_tuning.job.estimate"] = "fine_tuning.job.estimate"


class FineTuningExport(Response):
    """`fine_tuning.export` (Tunewright's): a job's model written to a file a user can take away.

    `file_id` (a file of purpose `fine-tune-results`, read with `GET /v1/files/{id}/content`) once `succeeded`;
    `error` once `failed`. `dtype` is null until a worker resolves "the base model's" (and for other formats);
    `quantization` is null but for `gguf`.
    """

    id: str
    job_id: str
    format: str
    checkpoint: str
    dtype: str | None
    quantization: str | None
    status: str
    file_id: str | None
    error: FineTuningJobError | None
    created_at: int
    finished_at: int | None
    object: Literal["fine_tuning.export"] = "fine_tuning.export"

    @classmethod
    def from_record(cls, record: ExportRecord) -> FineTuningExport:
        """The only mapping from an ExportRecord to the wire."""
        return cls(
            id=record.id,
            job_id=record.job_id,
            format=record.format,
            checkpoint=record.checkpoint,
            dtype=record.dtype,
            quantization=record.quantization,
            status=record.status,
            file_id=record.file_id,
            error=_job_error(record.error),
            created_at=record.created_at,
            finished_at=record.finished_at,
        )

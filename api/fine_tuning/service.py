"""Rules of /v1/fine_tuning/jobs: model and file checks, hyperparameters, state changes."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET

from tunewright.api.errors import InvalidRequestError, NotFoundError, echo
from tunewright.api.fine_tuning.estimate import CheckedJob, estimate, job_cost
from tunewright.api.idempotency import creating
from tunewright.api.spend.quota import admit_job
from tunewright.graders import GraderError, encode_grader
from tunewright.modeling.hyperparams import EXTENSION_KEYS, RFT_KEYS
from tunewright.modeling.modules import UnknownTargetModulesError, check_target_modules
from tunewright.modeling.registry import local_model_dir
from tunewright.storage.errors import NotFound, StateConflict
from tunewright.storage.events import make_event
from tunewright.storage.ids import new_id, new_model_slot
from tunewright.storage.records import ACTIVE_STATUSES, TERMINAL_STATUSES, JobEventRecord, JobRecord, JobStatus
from tunewright.training_files.errors import DatasetError
from tunewright.training_files.reinforcement import ItemCheck, check_job_grader
from tunewright.training_files.validate import JsonlChecker

if TYPE_CHECKING:
    from tunewright.api.auth import Principal
    from tunewright.api.fine_tuning.schemas import CreateFineTuningJobRequest, FineTuningJobEstimate
    from tunewright.graders import Grader
    from tunewright.inference.engine import InferenceEngine
    from tunewright.storage.base import Stores
    from tunewright.storage.records import FileRecord
    from tunewright.storage.settings import Settings

CORE_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs")
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def job_not_found(job_id: str) -> NotFoundError:
    """404 for a job id that is not in the caller's project."""
    return NotFoundError(
        f"Could not find fine-tuning job: {echo(job_id)}", param="fine_tuning_job_id", code="job_not_found"
    )


def model_not_found(model: str, *, param: str | None = "model", status: int = 400) -> InvalidRequestError:
    """The same answer for a model that does not exist and one the caller may not use."""
    error_cls = InvalidRequestError if status == 400 else NotFoundError
    return error_cls(
        f"The model `{echo(model)}` does not exist or you do not have access to it.",
        param=param,
        code="model_not_found",
    )


def event(job_id: str, project_id: str, message: str, *, level: str = "info") -> JobEventRecord:
    """A plain message event stamped now."""
    return make_event(job_id, project_id, message, level=level)


def resolve_base_model(stores: Stores, settings: Settings, model: str, *, project_id: str) -> str:
    """Return the configured base model `model` resolves to.

    An `ft:` model continues its own base: a fine-tuned model or a checkpoint model (`…:ckpt-step-N`) that the
    project owns or was granted by a checkpoint permission. Any other is 400 `model_not_found`, as an unknown one.
    """
    if model in settings.base_models:
        return model
    if not model.startswith("ft:"):
        raise model_not_found(model)
    try:
        return stores.metadata.get_model(model, project_id=project_id).base_model
    except NotFound:
        raise model_not_found(model) from None


def check_training_file(stores: Stores, file_id: str, *, param: str, project_id: str) -> FileRecord:
    """Return the project's fine-tune file, or a 400 naming `param` (one message for missing or foreign)."""
    try:
        record = stores.metadata.get_file(file_id, project_id=project_id)
    except NotFound:
        raise InvalidRequestError(
            f"Invalid file ID: {echo(file_id)}. The file does not exist or you do not have access to it.",
            param=param,
            code="invalid_file",
        ) from None
    if record.purpose != "fine-tune":
        raise InvalidRequestError(
            f"File {record.id} has purpose '{record.purpose}'; {param} needs a file uploaded with purpose 'fine-tune'.",
            param=param,
            code="invalid_file",
        )
    return record


def check_metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    """Enforce OpenAI's metadata limits: 16 pairs, keys ≤ 64 and values ≤ 512 characters."""
    if metadata is None:
        return None
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequestError(
            f"Invalid 'metadata': at most {MAX_METADATA_PAIRS} pairs are allowed, got {len(metadata)}.",
            param="metadata",
            code="invalid_value",
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidRequestError(
                f"Invalid 'metadata': key '{echo(key)}' is longer than {MAX_METADATA_KEY} characters.",
                param="metadata",
                code="invalid_value",
            )
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidRequestError(
                f"Invalid 'metadata[{echo(key)}]': values are at most {MAX_METADATA_VALUE} characters.",
                param=f"metadata.{key}",
                code="invalid_value",
            )
    return metadata


def build_method(data: CreateFineTuningJobRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return `(method, hyperparameters)` as stored: "auto" where not given, both views in step."""
    if data.hyperparameters is not UNSET and data.method is not UNSET:
        raise InvalidRequestError(
            "Specify hyperparameters either in 'method' or in the deprecated top-level 'hyperparameters', not both.",
            param="hyperparameters",
            code="invalid_value",
        )
    if data.method is UNSET:
        given = msgspec.to_builtins(data.hyperparameters) if data.hyperparameters is not UNSET else {}
        method_type = "supervised"
    else:
        method_type = data.method.type
        _check_method_shape(data)
        section = getattr(data.method, method_type)
        given = msgspec.to_builtins(section.hyperparameters) if section and section.hyperparameters else {}
    hyper = {key: given.get(key, "auto") for key in CORE_KEYS}
    if method_type == "dpo":
        hyper = {"beta": given.get("beta", "auto"), **hyper}
    if method_type == "reinforcement":
        hyper.update({key: given.get(key, "default" if key == "reasoning_effort" else "auto") for key in RFT_KEYS})
    hyper.update({k: v for k, v in given.items() if k in EXTENSION_KEYS})
    top = {key: hyper[key] for key in CORE_KEYS}
    top.update({k: v for k, v in hyper.items() if k in EXTENSION_KEYS})
    return {"type": method_type, method_type: {"hyperparameters": hyper}}, top


def check_reinforcement(
    settings: Settings, data: CreateFineTuningJobRequest, method: dict[str, Any], base_model: str
) -> Grader | None:
    """Decode and check a reinforcement job's grader, and store it (as sent, normalized) in `method`.

    Raises:
        InvalidRequestError: the grader is malformed or cannot run in the trainer, naming its path under
            `method.reinforcement.grader` (a model grader naming another model than the base names its `model`).
    """
    if method["type"] != "reinforcement" or data.method is UNSET or data.method.reinforcement is UNSET:
        return None
    try:
        grader = check_job_grader(data.method.reinforcement.grader, settings, base_model=base_model)
    except GraderError as exc:
        raise InvalidRequestError(exc.message, param=exc.param, code=exc.code) from None
    method["reinforcement"] = {"grader": encode_grader(grader), **method["reinforcement"]}
    return grader


def _check_method_shape(data: CreateFineTuningJobRequest) -> None:
    method = data.method
    assert method is not UNSET
    if method.type == "reinforcement" and method.reinforcement is UNSET:
        raise InvalidRequestError(
            "Missing required parameter: 'method.reinforcement' (a reinforcement job needs its grader).",
            param="method.reinforcement",
            code="missing_required_parameter",
        )
    for other in ("supervised", "dpo", "reinforcement"):
        if other != method.type and getattr(method, other) is not UNSET:
            raise InvalidRequestError(
                f"Invalid 'method': type is '{method.type}' but a '{other}' section was given.",
                param=f"method.{other}",
                code="invalid_value",
            )


def check_lora_targets(settings: Settings, base_model: str, method: dict[str, Any], *, legacy: bool) -> None:
    """Refuse `lora_target_modules` that name no linear layer of the base model, when its files are here.

    A model whose files are not on this machine (a packaged model not imported yet, a worker-only model) is
    checked by the worker before it loads the model.
    """
    method_type = method["type"]
    targets = method[method_type]["hyperparameters"].get("lora_target_modules")
    model_dir = local_model_dir(base_model, settings) if isinstance(targets, list) else None
    if model_dir is None:
        return
    try:
        check_target_modules(model_dir, targets, base_model)
    except UnknownTargetModulesError as exc:
        param = "hyperparameters" if legacy else f"method.{method_type}.hyperparameters"
        raise InvalidRequestError(str(exc), param=f"{param}.lora_target_modules", code="invalid_value") from None


def check_early_stopping(method: dict[str, Any], *, has_validation: bool, legacy: bool) -> None:
    """Refuse early-stopping settings that could never act: without a validation file, or a delta without patience.

    Early stopping watches the validation loss, so a job without `validation_file` has none to watch; a
    `early_stopping_min_delta` alone would be silently ignored.
    """
    method_type = method["type"]
    given = method[method_type]["hyperparameters"]
    prefix = "hyperparameters" if legacy else f"method.{method_type}.hyperparameters"
    for key in ("early_stopping_patience", "early_stopping_min_delta"):
        if key in given and method_type == "reinforcement":
            raise InvalidRequestError(
                f"Invalid '{key}': early stopping watches the validation loss, which reinforcement jobs do not "
                "measure (they report rewards).",
                param=f"{prefix}.{key}",
                code="invalid_value",
            )
        if key in given and not has_validation:
            raise InvalidRequestError(
                f"Invalid '{key}': early stopping watches the validation loss, so it needs a validation_file.",
                param=f"{prefix}.{key}",
                code="invalid_value",
            )
    if "early_stopping_min_delta" in given and "early_stopping_patience" not in given:
        raise InvalidRequestError(
            "Invalid 'early_stopping_min_delta': it only applies with early_stopping_patience, which was not given.",
            param=f"{prefix}.early_stopping_min_delta",
            code="invalid_value",
        )


def precheck_dataset(
    stores: Stores, settings: Settings, file: FileRecord, *, param: str, method_type: str, grader: Grader | None = None
) -> None:
    """Run the format rules synchronously on a small file; a problem is a 400 naming its lines.

    A reinforcement job's lines are checked against its grader's item templates too.
    """
    if file.bytes > settings.sync_validate_max_bytes:
        return
    line_check = ItemCheck(grader) if grader is not None else None
    checker = JsonlChecker(param=param, check_format=True, method=method_type, line_check=line_check)  # type: ignore[arg-type]
    try:
        for chunk in stores.blobs.open(file.blob_key):
            checker.feed(chunk)
        checker.finish()
    except DatasetError as exc:
        raise InvalidRequestError(exc.message, param=param, code=exc.code) from exc


def check_job_request(
    stores: Stores, settings: Settings, data: CreateFineTuningJobRequest, principal: Principal
) -> CheckedJob:
    """Run every check of job creation (the estimate runs the same ones, so it answers the same errors)."""
    project_id = principal.project_id or ""
    base_model = resolve_base_model(stores, settings, data.model, project_id=project_id)
    method, hyperparameters = build_method(data)
    check_lora_targets(settings, base_model, method, legacy=data.method is UNSET)
    grader = check_reinforcement(settings, data, method, base_model)
    training = check_training_file(stores, data.training_file, param="training_file", project_id=project_id)
    validation_id = data.validation_file if isinstance(data.validation_file, str) else None
    validation = (
        check_training_file(stores, validation_id, param="validation_file", project_id=project_id)
        if validation_id
        else None
    )
    check_early_stopping(method, has_validation=validation is not None, legacy=data.method is UNSET)
    metadata = check_metadata(data.metadata if isinstance(data.metadata, dict) else None)
    if isinstance(data.integrations, list) and len(data.integrations) > 5:
        raise InvalidRequestError(
            "Invalid 'integrations': at most 5 are allowed.", param="integrations", code="invalid_value"
        )
    precheck_dataset(stores, settings, training, param="training_file", method_type=method["type"], grader=grader)
    if validation is not None:
        precheck_dataset(
            stores, settings, validation, param="validation_file", method_type=method["type"], grader=grader
        )
    return CheckedJob(
        base_model=base_model,
        method=method,
        hyperparameters=hyperparameters,
        training=training,
        validation=validation,
        metadata=metadata,
    )


def create_job(
    stores: Stores, settings: Settings, engine: InferenceEngine, data: CreateFineTuningJobRequest, principal: Principal
) -> JobRecord:
    """Check everything a job needs, then store it `validating_files` with its first event."""
    project_id = principal.project_id or ""
    checked = check_job_request(stores, settings, data, principal)
    admit_job(stores, settings, principal, estimated_cost=lambda: job_cost(stores, settings, engine, checked))
    now = int(time.time())
    job = JobRecord(
        id=new_id("job"),
        project_id=project_id,
        organization_id=principal.organization_id or "",
        created_at=now,
        updated_at=now,
        model=data.model,
        base_model=checked.base_model,
        status=JobStatus.VALIDATING_FILES,
        training_file=checked.training.id,
        validation_file=checked.validation.id if checked.validation else None,
        hyperparameters=checked.hyperparameters,
        method=checked.method,
        seed=data.seed if isinstance(data.seed, int) else secrets.randbelow(2_147_483_648),
        model_slot=new_model_slot(),
        suffix=data.suffix if isinstance(data.suffix, str) else None,
        metadata=checked.metadata,
        integrations=msgspec.to_builtins(data.integrations) if isinstance(data.integrations, list) else None,
    )
    creating(job.id)
    stores.metadata.insert_job(job, event(job.id, project_id, f"Created fine-tuning job: {job.id}"))
    return job


def estimate_job(
    stores: Stores, settings: Settings, engine: InferenceEngine, data: CreateFineTuningJobRequest, principal: Principal
) -> FineTuningJobEstimate:
    """`POST /v1/fine_tuning/jobs/estimate`: the checks of job creation, then what the job would train and cost."""
    return estimate(stores, settings, engine, check_job_request(stores, settings, data, principal), data, principal)


def get_job(stores: Stores, job_id: str, *, project_id: str) -> JobRecord:
    """Return a job of the project or raise 404."""
    try:
        return stores.metadata.get_job(job_id, project_id=project_id)
    except NotFound:
        raise job_not_found(job_id) from None


_TRANSITIONS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "cancel": (ACTIVE_STATUSES, JobStatus.CANCELLED, "Fine-tuning job cancelled"),
    "pause": ((JobStatus.RUNNING,), JobStatus.PAUSED, "Fine-tuning job paused"),
    "resume": ((JobStatus.PAUSED,), JobStatus.QUEUED, "Fine-tuning job resumed; waiting for a worker"),
}


def change_state(stores: Stores, job_id: str, action: str, *, project_id: str) -> JobRecord:
    """Apply `cancel`, `pause` or `resume` as a compare-and-set; anything else is 400 invalid_job_state."""
    allowed, status, message = _TRANSITIONS[action]
    changes: dict[str, Any] = {"finished_at": int(time.time())} if status in TERMINAL_STATUSES else {}
    try:
        return stores.metadata.transition_job(
            job_id,
            project_id=project_id,
            allowed=allowed,
            status=status,
            event=event(job_id, project_id, message),
            **changes,
        )
    except NotFound:
        raise job_not_found(job_id) from None
    except StateConflict as exc:
        raise InvalidRequestError(
            f"Cannot {action} fine-tuning job {job_id}: its status is '{exc.current}'"
            f" ({action} needs {' or '.join(allowed)}).",
            param="fine_tuning_job_id",
            code="invalid_job_state",
        ) from None

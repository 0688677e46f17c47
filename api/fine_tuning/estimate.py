"""`POST /v1/fine_tuning/jobs/estimate` (Tunewright's): what a job would train, cost and take, before it exists.

Tokens. The estimate builds the job's training plan with the code the worker runs (modeling/plan.py): the base
model's tokenizer (the one the API serves chat with, `InferenceEngine.tokenizer`), the one chat renderer, the
same truncation to the context and the same resolution of "auto" epochs. Its `trained_tokens` is what the job
will bill, as long as the file and the model stay as they are.

Cost. `trained_tokens` times the base model's training price (TOML `[prices]`), as the costs endpoint prices it.

Duration. `trained_tokens` over the training throughput measured on this deployment's workers: the tokens per
second of the latest `THROUGHPUT_JOBS` jobs of that base model that succeeded (one row each, written by the
worker). Before any job of the model has finished, the throughput of the `estimate_tokens_per_s` setting
(`TUNEWRIGHT_ESTIMATE_TOKENS_PER_S`, 1,000 by default) is assumed and a warning says so. The time spent in the
queue, loading the model and evaluating a validation file is not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunewright.api.errors import APIError, InvalidRequestError
from tunewright.api.fine_tuning.schemas import EstimatedCost, FineTuningJobEstimate
from tunewright.api.spend import quota
from tunewright.api.usage.service import token_cost
from tunewright.inference.engine import EngineError
from tunewright.modeling.chat import ChatTemplateError
from tunewright.modeling.plan import check_large_file, plan_training, truncation_messages
from tunewright.modeling.registry import ModelUnavailableError, UnknownModelError, resolve_model_dir
from tunewright.storage.streams import blob_lines
from tunewright.training_files.errors import DatasetError

if TYPE_CHECKING:
    from decimal import Decimal

    from tunewright.api.auth import Principal
    from tunewright.api.fine_tuning.schemas import CreateFineTuningJobRequest
    from tunewright.inference.engine import InferenceEngine
    from tunewright.modeling.plan import TrainingPlan
    from tunewright.storage.base import Stores
    from tunewright.storage.records import FileRecord
    from tunewright.storage.settings import Settings

THROUGHPUT_JOBS = 20
"""How many of a base model's latest successful jobs the measured throughput averages over."""


@dataclass(frozen=True, slots=True)
class CheckedJob:
    """A job request that passed every check of job creation: what it trains, on which base model, how."""

    base_model: str
    method: dict[str, Any]
    hyperparameters: dict[str, Any]
    training: FileRecord
    validation: FileRecord | None
    metadata: dict[str, str] | None


def plan_job(stores: Stores, settings: Settings, engine: InferenceEngine, checked: CheckedJob) -> TrainingPlan:
    """The job's training plan, as the worker will build it.

    Raises:
        InvalidRequestError: the base model's files are not on this machine (`model_not_available`), or a file
            fails a check the worker would fail the job with (naming the file and its lines).
    """
    method_type = str(checked.method.get("type", "supervised"))
    try:
        tokenizer = engine.tokenizer(checked.base_model)
        model_dir = resolve_model_dir(checked.base_model, settings)
        for param, file in (("training_file", checked.training), ("validation_file", checked.validation)):
            if file is not None:
                check_large_file(stores, settings, file, param=param, method_type=method_type)
        return plan_training(
            blob_lines(stores.blobs, checked.training.blob_key),
            blob_lines(stores.blobs, checked.validation.blob_key) if checked.validation is not None else None,
            tokenizer,
            method=checked.method,
            model_dir=model_dir,
            max_context_tokens=settings.max_context_tokens,
        )
    except DatasetError as exc:
        raise InvalidRequestError(exc.message, param=exc.param, code=exc.code) from exc
    except ChatTemplateError as exc:
        raise InvalidRequestError(
            f"training_file cannot be rendered with the model's chat template: {exc}",
            param="training_file",
            code="invalid_training_file",
        ) from exc
    except (EngineError, UnknownModelError, ModelUnavailableError) as exc:
        raise InvalidRequestError(
            f"The base model '{checked.base_model}' is not available on this server: {exc}",
            param="model",
            code="model_not_available",
        ) from exc


def job_cost(stores: Stores, settings: Settings, engine: InferenceEngine, checked: CheckedJob) -> Decimal | None:
    """The job's training cost in dollars; None when it cannot be known here (the worker will tell)."""
    try:
        plan = plan_job(stores, settings, engine, checked)
    except APIError:
        return None
    return token_cost(plan.billed_tokens, settings.model_price(checked.base_model).training)


def tokens_per_second(stores: Stores, base_model: str) -> float | None:
    """The measured training throughput of a base model on this deployment; None before any job finished."""
    tokens, seconds, _ = stores.metadata.measured_throughput(base_model, jobs=THROUGHPUT_JOBS)
    return tokens / seconds if tokens > 0 and seconds > 0 else None


def estimate(
    stores: Stores,
    settings: Settings,
    engine: InferenceEngine,
    checked: CheckedJob,
    data: CreateFineTuningJobRequest,
    principal: Principal,
) -> FineTuningJobEstimate:
    """What the checked job would train, cost and take, and whether its project's and organization's limits allow it."""
    plan = plan_job(stores, settings, engine, checked)
    trained = plan.billed_tokens
    cost = token_cost(trained, settings.model_price(checked.base_model).training)
    warnings = truncation_messages(plan)
    measured = tokens_per_second(stores, checked.base_model)
    if measured is None:
        warnings.append(
            f"No job of {checked.base_model} has finished on this deployment yet: the duration assumes "
            f"{settings.estimate_tokens_per_s:,g} trained tokens per second."
        )
    state = quota.standings(
        stores, settings, organization_id=principal.organization_id or "", project_id=principal.project_id or ""
    )
    return FineTuningJobEstimate(
        model=data.model,
        training_file=checked.training.id,
        validation_file=checked.validation.id if checked.validation is not None else None,
        method=plan.method,
        n_epochs=plan.hyper.n_epochs,
        examples=len(plan.training.examples),
        tokens_per_epoch=plan.training.total_tokens,
        trained_tokens=trained,
        estimated_cost=EstimatedCost(value=float(cost)),
        estimated_duration_seconds=math.ceil(trained / (measured or settings.estimate_tokens_per_s)),
        within_spend_limit=state.refusing(cost * quota.CENTS) is None,
        warnings=warnings,
    )

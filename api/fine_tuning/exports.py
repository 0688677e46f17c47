"""Rules of /v1/fine_tuning/jobs/{id}/exports (Tunewright's): what may be exported, and the queued export.

The API only checks and queues: a training worker writes the file (trainer/export_task.py), never this process.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from msgspec import UNSET

from tunewright.api.errors import InvalidRequestError, NotFoundError, echo
from tunewright.api.fine_tuning.service import get_job
from tunewright.api.idempotency import creating
from tunewright.storage.errors import NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.records import ExportRecord, ExportStatus, JobStatus

if TYPE_CHECKING:
    from tunewright.api.fine_tuning.schemas import CreateFineTuningExportRequest
    from tunewright.storage.base import Stores
    from tunewright.storage.records import JobRecord, Page

DEFAULT_QUANTIZATION = "f16"
OPTION_FORMATS = {"dtype": "merged", "quantization": "gguf"}
"""The body fields that apply to one format only."""


def export_not_found(export_id: str) -> NotFoundError:
    """404 for an export id that is not one of this job's (another project's included)."""
    return NotFoundError(f"Could not find export: {echo(export_id)}", param="export_id", code="export_not_found")


def create_export(stores: Stores, job_id: str, data: CreateFineTuningExportRequest, *, project_id: str) -> ExportRecord:
    """Check the request against the job and queue the export for a worker.

    Raises:
        NotFoundError: the project has no such job.
        InvalidRequestError: an option of another format, a job that has not succeeded, or a `checkpoint` that is
            not a model of this job.
    """
    job = get_job(stores, job_id, project_id=project_id)
    for field, format_ in OPTION_FORMATS.items():
        if getattr(data, field) not in (None, UNSET) and data.format != format_:
            raise InvalidRequestError(
                f"Invalid '{field}': it applies to format '{format_}' only, not '{data.format}'.",
                param=field,
                code="invalid_value",
            )
    if job.status != JobStatus.SUCCEEDED:
        raise InvalidRequestError(
            f"Cannot export fine-tuning job {job_id}: its status is '{job.status}' (an export needs 'succeeded').",
            param="fine_tuning_job_id",
            code="invalid_job_state",
        )
    now = int(time.time())
    record = ExportRecord(
        id=new_id("export"),
        project_id=project_id,
        job_id=job.id,
        created_at=now,
        updated_at=now,
        format=data.format,
        checkpoint=exported_model(stores, job, data.checkpoint if isinstance(data.checkpoint, str) else None),
        status=ExportStatus.QUEUED,
        dtype=data.dtype if isinstance(data.dtype, str) else None,
        quantization=(data.quantization if isinstance(data.quantization, str) else DEFAULT_QUANTIZATION)
        if data.format == "gguf"
        else None,
    )
    creating(f"{job_id}/{record.id}")
    stores.metadata.insert_export(record)
    return record


def exported_model(stores: Stores, job: JobRecord, checkpoint: str | None) -> str:
    """The model to export: `checkpoint` (the job's fine-tuned model or a checkpoint model), else the former.

    Raises:
        InvalidRequestError: `checkpoint` is no model of this job, or the model was deleted.
    """
    name = checkpoint or job.fine_tuned_model or ""
    try:
        model = stores.metadata.get_owned_model(name, project_id=job.project_id)
    except NotFound:
        model = None
    if model is None or model.job_id != job.id:
        if checkpoint is None:
            message = f"The fine-tuned model of job {job.id} was deleted; there is nothing left to export."
        else:
            message = (
                f"Invalid 'checkpoint': `{echo(checkpoint)}` is not the fine-tuned model of job {job.id} nor one of "
                "its checkpoints (GET /v1/fine_tuning/jobs/{id}/checkpoints lists them)."
            )
        raise InvalidRequestError(message, param="checkpoint", code="invalid_value")
    return model.id


def get_export(stores: Stores, job_id: str, export_id: str, *, project_id: str) -> ExportRecord:
    """Return an export of the project's job, or 404 (the job's own 404 when the job is not the project's)."""
    get_job(stores, job_id, project_id=project_id)
    try:
        return stores.metadata.get_export(export_id, job_id=job_id, project_id=project_id)
    except NotFound:
        raise export_not_found(export_id) from None


def list_exports(stores: Stores, job_id: str, *, project_id: str, after: str | None, limit: int) -> Page[ExportRecord]:
    """A page of the job's exports, newest first, or the job's 404."""
    get_job(stores, job_id, project_id=project_id)
    return stores.metadata.list_exports(job_id, project_id=project_id, after=after, limit=limit)

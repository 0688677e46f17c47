"""``run_export``: one claimed export, from the job's model to a file the user downloads.

The worker claims an export as it claims a job (storage/export_queue.py) and holds its lease with the same
heartbeat. The recipe: find the model (the job's fine-tuned model or the checkpoint asked for) and the base
model's files, move the export to ``running`` with its options resolved, fetch the adapter, write the format
(`trainer/export.py`) into the blob store as a file of purpose ``fine-tune-results``, then publish the file and end
the export in one guarded transaction. A worker that dies midway leaves the export ``running`` under a lease that
expires; another worker (or the same one restarted) writes it again from the start, and the first attempt's blob,
never published, is swept as an orphan.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewright.modeling.registry import ModelUnavailableError, UnknownModelError, resolve_model_dir
from tunewright.storage.errors import DatabaseUnavailable, NotFound
from tunewright.storage.records import ExportStatus
from tunewright.trainer.export import (
    ExportError,
    ExportSource,
    base_dtype,
    base_model_reference,
    check_gguf_base,
    export_adapter,
    export_gguf,
    export_merged,
)
from tunewright.trainer.publish import download_adapter, store_result_file

if TYPE_CHECKING:
    from tunewright.storage.base import Stores
    from tunewright.storage.records import ExportClaim, ExportRecord
    from tunewright.storage.settings import Settings
    from tunewright.trainer.export import Artifact

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ExportHandle:
    """An export as a worker holds it: the stores and its claim."""

    settings: Settings
    stores: Stores
    claim: ExportClaim
    stop_requested: Any  # threading.Event: the worker was asked to stop (SIGTERM)
    lease_lost: Any  # threading.Event: the heartbeat found the lease gone


def run_export(handle: ExportHandle) -> str:
    """Write a claimed export's file and publish it; return the outcome.

    Returns:
        ``succeeded``, ``failed``, ``released`` (the worker is stopping and the export had not started), ``lost``
        (another worker holds it now), or ``interrupted`` (the worker is stopping while the database is
        unavailable: the export is left to its lease).
    """
    extra = {"export_id": handle.claim.export_id, "job_id": handle.claim.job_id}
    try:
        return _run_export(handle)
    except DatabaseUnavailable as exc:
        logger.warning("export %s left to its lease: %s", handle.claim.export_id, exc, extra=extra)
        return "interrupted"
    except ExportError as exc:
        return fail(handle, exc.code, exc.message, param=exc.param)
    except Exception:
        logger.exception("export %s failed", handle.claim.export_id, extra=extra)
        return fail(handle, "internal_error", "The export failed because of an internal error; see the server log.")


def _run_export(handle: ExportHandle) -> str:
    claim, stores = handle.claim, handle.stores
    if claim.status == ExportStatus.RUNNING and claim.attempt > handle.settings.max_job_attempts:
        return fail(handle, "too_many_attempts", "The export's worker stopped unexpectedly too many times.")
    if handle.stop_requested.is_set():
        return "released" if stores.queue.release_export(claim) else "lost"
    export = stores.metadata.get_export(claim.export_id, job_id=claim.job_id, project_id=claim.project_id)
    job = stores.metadata.get_job(claim.job_id, project_id=claim.project_id)
    adapter_key = exported_adapter(stores, export)
    base_dir = base_model_dir(job.base_model, handle.settings)
    options = resolved_options(export, base_dir)
    if not stores.queue.start_export(claim, **options):
        return "lost"
    with tempfile.TemporaryDirectory(prefix="tunewright-export-") as tmp:
        work = Path(tmp)
        source = ExportSource(
            model_id=export.checkpoint,
            base_model=job.base_model,
            base_dir=base_dir,
            adapter_dir=work / "adapter",
        )
        if export.format == "gguf":
            check_gguf_base(source)  # before the adapter is fetched and the model loaded
        fetch_adapter(stores, export, adapter_key, source.adapter_dir)
        artifact = write_artifact(handle, export, source, work / "out", options)
        file = store_result_file(stores, claim.project_id, artifact.filename, artifact.chunks)
    if handle.lease_lost.is_set() or not stores.queue.complete_export(claim, status=ExportStatus.SUCCEEDED, file=file):
        return "lost"  # the file's blob stays an intent: the sweeper removes it
    logger.info("export %s wrote %s (%d bytes)", claim.export_id, file.id, file.bytes, extra={"job_id": job.id})
    return "succeeded"


def exported_adapter(stores: Stores, export: ExportRecord) -> str:
    """The blob prefix of the exported model's adapter.

    Raises:
        ExportError: the model was deleted after the export was asked for.
    """
    try:
        return stores.metadata.get_owned_model(export.checkpoint, project_id=export.project_id).adapter_key
    except NotFound:
        raise ExportError(
            "model_not_found",
            f"The model {export.checkpoint} was deleted before it could be exported.",
            param="checkpoint",
        ) from None


def fetch_adapter(stores: Stores, export: ExportRecord, prefix: str, directory: Path) -> None:
    """Copy the adapter's files out of the blob store.

    Raises:
        ExportError: they are gone (the model was deleted since its row was read).
    """
    try:
        download_adapter(stores, prefix, directory)
    except NotFound:
        raise ExportError(
            "model_not_found",
            f"The model {export.checkpoint} was deleted while it was being exported.",
            param="checkpoint",
        ) from None


def base_model_dir(base_model: str, settings: Settings) -> Path:
    """The base model's files on this worker.

    Raises:
        ExportError: the base model is no longer configured, or its files are not here.
    """
    try:
        return resolve_model_dir(base_model, settings)
    except (UnknownModelError, ModelUnavailableError) as exc:
        raise ExportError("model_not_available", f"The base model '{base_model}' is not available: {exc}") from None


def resolved_options(export: ExportRecord, base_dir: Path) -> dict[str, str]:
    """The export's options as it will be written: a merged export without a dtype takes the base model's."""
    if export.format == "merged":
        return {"dtype": export.dtype or base_dtype(base_dir)}
    if export.format == "gguf":
        return {"quantization": export.quantization or "f16"}
    return {}


def write_artifact(
    handle: ExportHandle, export: ExportRecord, source: ExportSource, work: Path, options: dict[str, str]
) -> Artifact:
    """Write the export's format into ``work``; return what to store."""
    work.mkdir()
    if export.format == "adapter":
        reference = base_model_reference(source.base_model, handle.settings)
        return export_adapter(source, work, base_reference=reference)
    if export.format == "merged":
        return export_merged(source, work, dtype=options["dtype"])
    if export.format == "gguf":
        return export_gguf(source, work, quantization=options["quantization"])
    raise ExportError("invalid_value", f"Unknown export format '{export.format}'.", param="format")


def fail(handle: ExportHandle, code: str, message: str, *, param: str | None = None) -> str:
    """End the export as failed with ``error = {code, message, param}``; return the outcome."""
    error = {"code": code, "message": message, "param": param}
    done = handle.stores.queue.complete_export(handle.claim, status=ExportStatus.FAILED, error=error)
    logger.info("export %s failed: %s", handle.claim.export_id, message, extra={"job_id": handle.claim.job_id})
    return "failed" if done else "lost"

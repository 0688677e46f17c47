"""Operational endpoints: /healthz and /metrics (no key: in the OpenAPI document without a security scheme)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from litestar import MediaType, Response, get
from prometheus_client import CONTENT_TYPE_LATEST

from tunewright.api.dependencies import AppMetrics, AppStores, TrainerStatusFile
from tunewright.storage.errors import StorageError
from tunewright.storage.supervision import read_status

if TYPE_CHECKING:
    from pathlib import Path


def _check(name: str, probe: Any) -> str | None:
    try:
        probe()
    except (StorageError, OSError) as exc:
        return f"{name}: {exc or type(exc).__name__}"
    return None


def trainers_health(path: Path | None, now: float) -> tuple[dict[str, Any] | None, str | None]:
    """The `trainers` object of /healthz and the problem it shows, from `serve`'s status file.

    None when this API runs without a supervisor (`--trainers 0`, or not under `serve`): its workers live
    elsewhere. A status the supervisor stopped refreshing vouches for no trainer.
    """
    if path is None:
        return None, None
    status = read_status(path)
    if status is None:
        return {"expected": None, "running": 0, "restarts": None}, "trainers: no status from the supervisor"
    stale = status.is_stale(now)
    running = 0 if stale else status.running
    body = {"expected": status.expected, "running": running, "restarts": status.restarts}
    if stale:
        return body, f"trainers: no status from the supervisor for {now - status.updated_at:.0f} s"
    if running < status.expected:
        return body, f"trainers: {running} of {status.expected} running"
    return body, None


@get("/healthz", tags=["System"], sync_to_thread=True)
def healthz(stores: AppStores, trainer_status: TrainerStatusFile) -> Response[dict[str, Any]]:
    """503 when the database or the blob store fails; 200 `degraded` when a trainer is down; else 200 `ok`.

    A trainer that is down does not take the API out of a load balancer: every API route still works, jobs
    wait in the queue, and `serve` restarts the trainer on its own.
    """
    problems = [p for p in (_check("database", stores.metadata.ping), _check("blobs", stores.blobs.ping)) if p]
    trainers, trainer_problem = trainers_health(trainer_status, time.time())
    body: dict[str, Any] = {"status": "unavailable" if problems else "degraded" if trainer_problem else "ok"}
    if trainer_problem:
        problems.append(trainer_problem)
    if problems:
        body["problems"] = problems
    if trainers is not None:
        body["trainers"] = trainers
    return Response(body, status_code=503 if body["status"] == "unavailable" else 200)


@get("/metrics", tags=["System"], sync_to_thread=True, media_type=MediaType.TEXT)
def metrics(metrics: AppMetrics) -> Response[bytes]:
    """Prometheus text exposition."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


ROUTES = [healthz, metrics]

"""Operational endpoints: /healthz and /metrics (no authentication)."""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tunewright.api.dependencies import AppMetrics, AppStores
from tunewright.storage.errors import StorageError


def _check(name: str, probe: Any) -> str | None:
    try:
        probe()
    except (StorageError, OSError) as exc:
        return f"{name}: {exc or type(exc).__name__}"
    return None


@get("/healthz", include_in_schema=False, sync_to_thread=True)
def healthz(stores: AppStores) -> Response[dict[str, Any]]:
    """200 when the database and the blob store answer, else 503 naming what failed."""
    problems = [p for p in (_check("database", stores.metadata.ping), _check("blobs", stores.blobs.ping)) if p]
    if problems:
        return Response({"status": "unavailable", "problems": problems}, status_code=503)
    return Response({"status": "ok"}, status_code=200)


@get("/metrics", include_in_schema=False, sync_to_thread=True, media_type=MediaType.TEXT)
def metrics(metrics: AppMetrics) -> Response[bytes]:
    """Prometheus text exposition."""
    body = generate_latest(metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


ROUTES = [healthz, metrics]

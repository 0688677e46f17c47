"""Operational endpoints: /healthz and /metrics (no authentication)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import MediaType, Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tunewright.storage.errors import StorageError

if TYPE_CHECKING:
    from tunewright.storage.base import Stores


def _check(name: str, probe: Any) -> str | None:
    try:
        probe()
    except (StorageError, OSError) as exc:
        return f"{name}: {exc or type(exc).__name__}"
    return None


@get("/healthz", include_in_schema=False, sync_to_thread=True)
def healthz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """200 when the database and the blob store answer, else 503 naming what failed."""
    stores: Stores = request.app.state.stores
    problems = [p for p in (_check("database", stores.metadata.ping), _check("blobs", stores.blobs.ping)) if p]
    if problems:
        return Response({"status": "unavailable", "problems": problems}, status_code=503)
    return Response({"status": "ok"}, status_code=200)


@get("/metrics", include_in_schema=False, sync_to_thread=True, media_type=MediaType.TEXT)
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text exposition."""
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


ROUTES = [healthz, metrics]

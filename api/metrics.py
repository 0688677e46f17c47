"""Prometheus metrics: requests by route and status, latency, jobs by status, queue depth, trainers, webhooks."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tunewright.storage.ids import new_request_id
from tunewright.storage.supervision import read_status

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from tunewright.storage.base import Stores


# Label values come from a fixed set, so clients cannot grow the series without bound: every path no route
# matches is one route, and every method HTTP does not define (`FOO /v1/files`) is one method.
UNMATCHED_ROUTE = "unmatched"
OTHER_METHOD = "other"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
RESPONSE_HEADERS = "response_headers"
"""Key of the request's scope state holding `(name, value)` byte pairs that the answer must carry, whatever it
turns out to be (the rate-limit headers of an admitted request that then fails, or streams)."""


class StoreCollector:
    """Reads job counts and queue depth from the metadata database at scrape time."""

    def __init__(self, stores: Stores) -> None:
        """Remember the stores to read."""
        self._stores = stores

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield `tunewright_jobs` by status, `tunewright_queue_depth_jobs` and the webhook backlog."""
        jobs = GaugeMetricFamily("tunewright_jobs", "Fine-tuning jobs by status", labels=["status"])
        for status, count in sorted(self._stores.metadata.count_jobs_by_status().items()):
            jobs.add_metric([status], count)
        yield jobs
        depth = GaugeMetricFamily("tunewright_queue_depth_jobs", "Jobs waiting for a worker")
        depth.add_metric([], self._stores.queue.depth())
        yield depth
        backlog = GaugeMetricFamily(
            "tunewright_webhook_backlog_deliveries", "Webhook deliveries not yet acknowledged nor given up on"
        )
        backlog.add_metric([], self._stores.metadata.count_webhook_backlog())
        yield backlog


class TrainerCollector:
    """Reads `serve`'s trainer status file at scrape time (see `storage/supervision.py`)."""

    def __init__(self, path: Path) -> None:
        """Remember the status file to read."""
        self._path = path

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Yield `tunewright_trainer_restarts_total` and the expected and running trainer counts."""
        status = read_status(self._path)
        if status is None:
            return
        restarts = CounterMetricFamily("tunewright_trainer_restarts", "Embedded trainers restarted after they exited")
        restarts.add_metric([], status.restarts)
        yield restarts
        expected = GaugeMetricFamily("tunewright_trainer_expected_processes", "Embedded trainers serve should run")
        expected.add_metric([], status.expected)
        yield expected
        running = GaugeMetricFamily("tunewright_trainer_running_processes", "Embedded trainers running")
        running.add_metric([], 0 if status.is_stale(time.time()) else status.running)
        yield running


class Metrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self, stores: Stores, trainer_status: Path | None = None) -> None:
        """Create the registry and the HTTP metrics; the trainers' when `serve` publishes their status."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tunewright_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tunewright_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            registry=self.registry,
        )
        # Webhooks, counted by the sender of this process; `outcome` takes the few values of delivery.Outcome.
        self.webhook_attempts = Counter(
            "tunewright_webhook_delivery_attempts_total",
            "Webhook delivery attempts by outcome (succeeded, http_error, network_error, refused)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "tunewright_webhook_deliveries_total",
            "Webhook deliveries ended, by outcome (succeeded, or failed: given up after the retry window)",
            ["outcome"],
            registry=self.registry,
        )
        self.ratelimit_rejections = Counter(
            "tunewright_ratelimit_rejections_total",
            "Requests refused with 429 by a rate limit, by limit and base model ('' for per-key limits)",
            ["limit", "model"],
            registry=self.registry,
        )
        self.ratelimit_redis_errors = Counter(
            "tunewright_ratelimit_redis_errors_total",
            "Rate-limit counter commands that failed (Redis unreachable, slow or erroring)",
            registry=self.registry,
        )
        self.ratelimit_unchecked = Counter(
            "tunewright_ratelimit_unchecked_requests_total",
            "Requests let through without a rate-limit check because Redis was failing (fail open)",
            registry=self.registry,
        )
        self.registry.register(StoreCollector(stores))  # type: ignore[arg-type]
        if trainer_status is not None:
            self.registry.register(TrainerCollector(trainer_status))  # type: ignore[arg-type]


async def serve_with_context(app: ASGIApp, metrics: Metrics, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one request with a request id on the response and its metrics recorded.

    Runs outside Litestar's exception handling, so error responses (unknown routes included) get both.
    """
    if scope["type"] != "http":
        await app(scope, receive, send)
        return
    state: dict[str, Any] = scope.setdefault("state", {})  # type: ignore[typeddict-item]
    request_id = state.setdefault("request_id", new_request_id())
    header = (b"x-request-id", request_id.encode())
    started = time.monotonic()
    status = 500

    async def send_wrapper(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            extra = state.get(RESPONSE_HEADERS, ())
            message["headers"] = [*message.get("headers", []), header, *extra]  # type: ignore[typeddict-unknown-key]
        await send(message)

    try:
        await app(scope, receive, send_wrapper)
    finally:
        route = scope.get("path_template") or UNMATCHED_ROUTE
        method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER_METHOD
        metrics.requests.labels(route, method, str(status)).inc()
        metrics.latency.labels(route, method).observe(time.monotonic() - started)

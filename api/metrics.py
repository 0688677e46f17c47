"""Prometheus metrics: requests, jobs, queue, trainers, webhooks, tokens, time to first token, adapter cache.

Two kinds of series. This process's own (HTTP requests, inference tokens, time to first token, the adapter cache,
webhook attempts, rate-limit and quota rejections). And series read from the database at scrape time (jobs by
status, queue depth, webhook backlog, training tokens, queue wait, job duration): every API process reports the
same cluster-wide values, because training runs in worker processes anywhere that have no scrape target of their
own; take one process's value (`max`), not the sum.

Several API processes behind one port (`tunewright serve --workers N`, N > 1) cannot be scraped one by one: a
scrape reaches whichever worker accepts it. So there the process's own series use prometheus_client's
multiprocess mode: each worker writes its counters to its own file in one directory (`PROMETHEUS_MULTIPROC_DIR`,
which `serve` creates and names to its workers), and a scrape answered by any worker adds up every worker's
files, those of workers that died included (a counter never goes back). With one process (or several on their
own ports) they stay in memory: sum them across processes.

Labels come from bounded sets: routes, methods, statuses, outcomes, the configured base models, and projects, of
which only the first `TUNEWRIGHT_METRICS_MAX_PROJECTS` created get their own value (`ProjectLabels`, the same
choice in every process); the rest are `other`. No job or request id is ever a label.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from tunewright.storage.ids import new_request_id
from tunewright.storage.supervision import read_status

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from tunewright.inference.adapters import AdapterCacheStats
    from tunewright.storage.base import Stores
    from tunewright.storage.records import TimeHistogram


logger = logging.getLogger(__name__)

# Label values come from a fixed set, so clients cannot grow the series without bound: every path no route
# matches is one route, and every method HTTP does not define (`FOO /v1/files`) is one method.
UNMATCHED_ROUTE = "unmatched"
OTHER_METHOD = "other"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
RESPONSE_HEADERS = "response_headers"
"""Key of the request's scope state holding `(name, value)` byte pairs that the answer must carry, whatever it
turns out to be (the rate-limit headers of an admitted request that then fails, or streams)."""
OTHER_PROJECTS = "other"

FIRST_TOKEN_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_WAIT_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
JOB_DURATION_BUCKETS_S = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200)


class ProjectLabels:
    """The `project` label: a project's id for the first `limit` projects created (of every organization), else `other`.

    Chosen by creation order, read from the database, rather than by the order in which a process meets projects,
    so that every API process (and every restart) gives a project the same label: the series of several processes
    add up, and none counts a project under its id while another counts it as `other`. A process reads the
    first `limit` project ids when it meets a project it has not labelled while fewer than `limit` exist; once
    `limit` exist the set is final, and labelling costs a set lookup.
    """

    def __init__(self, limit: int, first: Callable[[int], list[str]]) -> None:
        """Label at most `limit` projects by id; `first(n)` reads the ids of the first `n` projects created."""
        self._limit = limit
        self._first = first
        self._known: frozenset[str] = frozenset()
        self._final = False
        self._lock = threading.Lock()

    def __call__(self, project_id: str) -> str:
        """The label of `project_id` (may read the database: call it off the event loop)."""
        if project_id in self._known:
            return project_id
        if self._final or not project_id:
            return OTHER_PROJECTS
        with self._lock:
            if project_id not in self._known and not self._final:
                try:
                    first = self._first(self._limit)
                except Exception:  # a metric must not fail a request; the next new project reads again
                    logger.exception("could not read the projects to label in /metrics")
                    return OTHER_PROJECTS
                self._known, self._final = frozenset(first), len(first) >= self._limit
        return project_id if project_id in self._known else OTHER_PROJECTS


def first_projects(stores: Stores) -> Callable[[int], list[str]]:
    """`first(n)`: the ids of the first `n` projects created, archived ones included, oldest first."""

    def first(limit: int) -> list[str]:
        page = stores.metadata.list_projects(organization_id=None, after=None, limit=limit, include_archived=True)
        return [project.id for project in page.items]

    return first


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


class TrainingCollector:
    """Reads training tokens, queue waits and job durations from the database at scrape time (all workers')."""

    def __init__(self, stores: Stores, projects: ProjectLabels) -> None:
        """Remember the stores to read and the project labels to use."""
        self._stores = stores
        self._projects = projects

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        """Yield `tunewright_training_tokens_total`, `tunewright_job_queue_wait_seconds` and job durations."""
        tokens = CounterMetricFamily(
            "tunewright_training_tokens",
            "Tokens trained (jobs' trained_tokens) by project and base model",
            labels=["project", "base_model"],
        )
        sums: dict[tuple[str, str], int] = {}
        for row in self._stores.metadata.training_tokens_by_project():
            key = (self._projects(row.project_id), row.base_model)
            sums[key] = sums.get(key, 0) + row.tokens
        for key, value in sorted(sums.items()):
            tokens.add_metric(list(key), value)
        yield tokens
        times = self._stores.metadata.job_times(
            wait_bounds=QUEUE_WAIT_BUCKETS_S, duration_bounds=JOB_DURATION_BUCKETS_S
        )
        wait = HistogramMetricFamily(
            "tunewright_job_queue_wait_seconds", "Time from a job's creation to its first running", labels=[]
        )
        wait.add_metric([], *_histogram(times.queue_wait))
        yield wait
        duration = HistogramMetricFamily(
            "tunewright_job_duration_seconds",
            "Time from a job's first running (or creation, if it never ran) to its end, by outcome",
            labels=["outcome"],
        )
        for outcome, histogram in times.duration.items():
            duration.add_metric([outcome], *_histogram(histogram))
        yield duration


def _histogram(histogram: TimeHistogram) -> tuple[list[tuple[str, float]], float]:
    """Prometheus's cumulative buckets (`le`, count) and the sum of a `TimeHistogram`."""
    buckets, running = [], 0
    for bound, count in zip([*histogram.bounds, float("inf")], histogram.counts, strict=True):
        running += count
        buckets.append((floatToGoString(bound), float(running)))
    return buckets, float(histogram.total_s)


class AdapterCacheCollector:
    """Reads an engine's adapter cache counters at scrape time: an inference node's, the one process it has.

    The API keeps the same series as counters of its own (`AdapterCacheCounters`), for multiprocess mode.
    """

    def __init__(self, read: Callable[[], AdapterCacheStats | None]) -> None:
        """Remember how to read the counters."""
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        """Yield hits, misses and evictions (by `level`: memory or disk)."""
        stats = self._read()
        if stats is None:
            return
        hits = CounterMetricFamily("tunewright_adapter_cache_hits", "Adapter acquisitions that found it loaded")
        hits.add_metric([], stats.hits)
        yield hits
        misses = CounterMetricFamily("tunewright_adapter_cache_misses", "Adapter acquisitions that had to load it")
        misses.add_metric([], stats.misses)
        yield misses
        evictions = CounterMetricFamily(
            "tunewright_adapter_cache_evictions", "Idle adapters evicted to keep the cache's bounds", labels=["level"]
        )
        evictions.add_metric(["memory"], stats.evicted_from_memory)
        evictions.add_metric(["disk"], stats.evicted_from_disk)
        yield evictions


class AdapterCacheCounters:
    """An engine's adapter cache counters as this process's own counters (so multiprocess mode adds them up).

    The cache counts in memory (`AdapterCache.stats()`); `sync` adds what it counted since the previous call.
    It runs after every request and before every scrape, so each process's counts are written before any
    process answers a scrape.
    """

    def __init__(self, read: Callable[[], AdapterCacheStats | None], registry: CollectorRegistry) -> None:
        """Create the counters (0 until the cache counts anything) in `registry`."""
        self._read = read
        self._seen: AdapterCacheStats | None = None
        self._lock = threading.Lock()
        self.hits = Counter(
            "tunewright_adapter_cache_hits", "Adapter acquisitions that found it loaded", registry=registry
        )
        self.misses = Counter(
            "tunewright_adapter_cache_misses", "Adapter acquisitions that had to load it", registry=registry
        )
        self.evictions = Counter(
            "tunewright_adapter_cache_evictions",
            "Idle adapters evicted to keep the cache's bounds",
            ["level"],
            registry=registry,
        )
        self.memory, self.disk = self.evictions.labels("memory"), self.evictions.labels("disk")

    def sync(self) -> None:
        """Add to the counters what the cache counted since the last sync (nothing when it has not changed)."""
        stats = self._read()
        if stats is None or stats is self._seen:
            return
        with self._lock:  # read again inside: two syncs at once must not both add the same counts
            stats = self._read() or stats
            seen, self._seen = self._seen, stats
            for counter, name in (
                (self.hits, "hits"),
                (self.misses, "misses"),
                (self.memory, "evicted_from_memory"),
                (self.disk, "evicted_from_disk"),
            ):
                grown = getattr(stats, name) - (0 if seen is None else getattr(seen, name))
                if grown > 0:
                    counter.inc(grown)


def adapter_cache_stats(engine: object) -> AdapterCacheStats | None:
    """The adapter cache counters of `engine` (a built local engine); None for one that keeps no cache here."""
    built = getattr(engine, "current", engine)  # a LazyEngine: the engine it built, if any
    read = getattr(built, "adapter_cache_stats", None)
    return None if read is None else read()


class Metrics:
    """One set of collectors per app, so several apps in one process (tests) do not collide."""

    def __init__(
        self,
        stores: Stores,
        trainer_status: Path | None = None,
        *,
        max_projects: int = 100,
        adapter_stats: Callable[[], AdapterCacheStats | None] | None = None,
        multiprocess_dir: str | None = None,
    ) -> None:
        """Create the registry and the HTTP metrics; the trainers' when `serve` publishes their status.

        Args:
            stores: read at scrape time (jobs, queue, webhooks, training).
            trainer_status: the status file of the `serve` that supervises the trainers, if any.
            max_projects: projects given their own `project` label (`TUNEWRIGHT_METRICS_MAX_PROJECTS`).
            adapter_stats: reads the engine's adapter cache counters (none: no such series).
            multiprocess_dir: prometheus_client's `PROMETHEUS_MULTIPROC_DIR`, when several processes share it:
                a scrape then reports every process's counters from there (the variable must have been set
                before prometheus_client was imported).

        Raises:
            RuntimeError: `multiprocess_dir` is given but prometheus_client keeps its values in memory.
        """
        own = CollectorRegistry(auto_describe=True)
        """This process's counters; what a scrape reports, unless every process's files are."""
        if multiprocess_dir is None:
            self.registry = own
        else:
            if not getattr(values.ValueClass, "_multiprocess", False):
                raise RuntimeError(
                    "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported: the counters of this "
                    "process would not reach the directory"
                )
            self.registry = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self.registry, path=multiprocess_dir)
        self.projects = ProjectLabels(max_projects, first_projects(stores))
        self.requests = Counter(
            "tunewright_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "tunewright_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            registry=own,
        )
        # Webhooks, counted by the sender of this process; `outcome` takes the few values of delivery.Outcome.
        self.webhook_attempts = Counter(
            "tunewright_webhook_delivery_attempts_total",
            "Webhook delivery attempts by outcome (succeeded, http_error, network_error, refused)",
            ["outcome"],
            registry=own,
        )
        self.webhook_deliveries = Counter(
            "tunewright_webhook_deliveries_total",
            "Webhook deliveries ended, by outcome (succeeded, or failed: given up after the retry window)",
            ["outcome"],
            registry=own,
        )
        self.ratelimit_rejections = Counter(
            "tunewright_ratelimit_rejections_total",
            "Requests refused with 429 by a rate limit, by limit and base model ('' for per-key limits)",
            ["limit", "model"],
            registry=own,
        )
        self.quota_rejections = Counter(
            "tunewright_quota_rejections_total",
            "Requests refused with 429 insufficient_quota (a project or organization at its spend limit), by kind",
            ["kind"],
            registry=own,
        )
        self.ratelimit_redis_errors = Counter(
            "tunewright_ratelimit_redis_errors_total",
            "Rate-limit counter commands that failed (Redis unreachable, slow or erroring)",
            registry=own,
        )
        self.ratelimit_unchecked = Counter(
            "tunewright_ratelimit_unchecked_requests_total",
            "Requests let through without a rate-limit check because Redis was failing (fail open)",
            registry=own,
        )
        self.inference_tokens = Counter(
            "tunewright_inference_tokens_total",
            "Tokens of chat and legacy completions by project, base model and kind (prompt, completion)",
            ["project", "base_model", "kind"],
            registry=own,
        )
        self.first_token = Histogram(
            "tunewright_inference_time_to_first_token_seconds",
            "Time from a completion request's arrival to its first generated token, by base model",
            ["base_model"],
            buckets=FIRST_TOKEN_BUCKETS_S,
            registry=own,
        )
        self.adapter_cache = None if adapter_stats is None else AdapterCacheCounters(adapter_stats, own)
        self.registry.register(StoreCollector(stores))  # type: ignore[arg-type]
        self.registry.register(TrainingCollector(stores, self.projects))  # type: ignore[arg-type]
        if trainer_status is not None:
            self.registry.register(TrainerCollector(trainer_status))  # type: ignore[arg-type]

    def count_tokens(self, project_id: str, base_model: str, *, prompt: int, completion: int) -> None:
        """Add one request's tokens (off the event loop: the project's label may need a database read)."""
        project = self.projects(project_id)
        self.inference_tokens.labels(project, base_model, "prompt").inc(prompt)
        self.inference_tokens.labels(project, base_model, "completion").inc(completion)

    def after_request(self) -> None:
        """Write what this process counted outside its own counters (the adapter cache's) into them."""
        if self.adapter_cache is not None:
            self.adapter_cache.sync()

    def exposition(self) -> bytes:
        """The Prometheus text exposition of a scrape."""
        self.after_request()
        return generate_latest(self.registry)


def _has_body(scope: Scope) -> bool:
    """Whether the request comes with a body: a non-zero `Content-Length`, or `Transfer-Encoding` (chunked)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() != b"0"
        if name == b"transfer-encoding":
            return True
    return False


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
    body_unread = _has_body(scope)

    async def receive_wrapper() -> Message:
        nonlocal body_unread
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_unread = False
        return message

    async def send_wrapper(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            extra = state.get(RESPONSE_HEADERS, ())
            headers = [*message.get("headers", []), header, *extra]
            if body_unread and not any(name.lower() == b"connection" for name, _ in headers):
                # Answered before the body was read (a refusal at line 14 of a long file, a 413): the rest
                # cannot be told from the next request on this connection, so the server closes it and the
                # client, told so, sends its next request on a new one instead of on a socket being closed.
                headers.append((b"connection", b"close"))
            message["headers"] = headers  # type: ignore[typeddict-unknown-key]
        await send(message)

    try:
        await app(scope, receive_wrapper if body_unread else receive, send_wrapper)
    finally:
        route = scope.get("path_template") or UNMATCHED_ROUTE
        method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER_METHOD
        metrics.requests.labels(route, method, str(status)).inc()
        metrics.latency.labels(route, method).observe(time.monotonic() - started)
        metrics.after_request()

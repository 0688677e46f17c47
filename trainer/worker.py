"""The training worker: claim a job (or an export), hold its lease while it runs, run it, and loop.

A heartbeat thread renews the lease every ``TUNEWRIGHT_HEARTBEAT_S`` for as long as the job is held (loading a
model or tokenizing a large file takes longer than a step); when a renewal is refused it flags the lease as lost,
and training stops at the next step. ``request_stop`` (SIGTERM) lets the current step finish, saves a resume
point and gives the job back to the queue.

A database outage (PostgreSQL restarting, a dropped connection, SQLite's disk full or its lock held too long)
ends neither the worker nor its job: every metadata and queue call waits it out (``Patient``).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from tunewright.storage.base import Stores
from tunewright.storage.errors import DatabaseUnavailable
from tunewright.storage.ids import new_id
from tunewright.storage.records import TERMINAL_STATUSES, JobStatus
from tunewright.trainer.export_task import ExportHandle, run_export
from tunewright.trainer.job import run_job
from tunewright.trainer.session import JobHandle

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from tunewright.storage.settings import Settings
    from tunewright.trainer.backends.base import TrainingBackend

logger = logging.getLogger(__name__)

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
"""A call that found the database unavailable is retried after 0.5 s, then twice as late each time, up to 10 s."""
REMIND_EVERY_S = 60.0
"""While the database stays unavailable, a warning repeats this often."""


class Patient:
    """A store whose calls wait out a database outage: a call that raises `DatabaseUnavailable` is retried.

    The retries back off from `RETRY_FIRST_S` to `RETRY_MAX_S` and go on until the call succeeds, or until
    ``stop`` is set (the worker is stopping): then the error is raised, the job is left to its lease, which
    expires, and the job resumes elsewhere from its last resume point. A job held meanwhile keeps its training
    state: its writes are guarded by the lease, so if another worker took the job over during the outage they
    are refused and the worker drops it, as on any lost lease. A write that the server applied but whose answer
    was lost is harmless to retry: guarded writes are then refused or set the same values, and an event with
    the same id is inserted once.
    """

    def __init__(self, store: Any, *, stop: threading.Event) -> None:
        """Wrap ``store``; give up retrying once ``stop`` is set."""
        self._store = store
        self._stop = stop

    def __getattr__(self, name: str) -> Any:
        """The store's attribute; methods come back wrapped in the retry loop."""
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute
        return functools.partial(self._call, attribute)

    def _call(self, method: Any, /, *args: Any, **kwargs: Any) -> Any:
        delay = RETRY_FIRST_S
        since: float | None = None
        reminded = 0.0
        while True:
            try:
                result = method(*args, **kwargs)
            except DatabaseUnavailable as exc:
                if self._stop.is_set():
                    raise
                now = time.monotonic()
                if since is None:
                    since = reminded = now
                    logger.warning("database unavailable in %s (%s); retrying until it answers", method.__name__, exc)
                elif now - reminded >= REMIND_EVERY_S:
                    reminded = now
                    logger.warning("database still unavailable after %.0f s (%s)", now - since, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if since is not None:
                logger.warning("database answers again after %.1f s (%s)", time.monotonic() - since, method.__name__)
            return result


class LeaseKeeper:
    """Renews a lease on a background thread until closed; ``lost`` is set once a renewal is refused."""

    def __init__(self, renew: Callable[[], bool], *, held: str, every_s: float) -> None:
        """Call ``renew`` (the queue's heartbeat of one claim) every ``every_s`` seconds; ``held`` names it in logs."""
        self.lost = threading.Event()
        self._renew = renew
        self._held = held
        self._every_s = every_s
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{held.split()[-1]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        """Start the heartbeat thread."""
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Stop the heartbeat thread."""
        self._closed.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._closed.wait(self._every_s):
            try:
                held = self._renew()
            except DatabaseUnavailable as exc:  # an outage: the lease still runs; the next beat tries again
                logger.debug("heartbeat of %s failed: %s", self._held, exc)
                continue
            except Exception:
                logger.exception("heartbeat of %s failed", self._held)
                continue
            if not held:
                self.lost.set()
                return


class Worker:
    """Claims jobs and exports from the queue and runs them one at a time."""

    def __init__(self, settings: Settings, stores: Stores, backend: TrainingBackend, *, device: str) -> None:
        """Prepare a worker with a fresh id (host, pid and a unique suffix); its database calls are `Patient`."""
        self._stop = threading.Event()
        self.settings = settings
        self.stores = Stores(
            blobs=stores.blobs,
            metadata=Patient(stores.metadata, stop=self._stop),
            queue=Patient(stores.queue, stop=self._stop),
        )
        self._lease_queue = stores.queue  # the heartbeat thread skips beats in an outage rather than wait
        self.backend = backend
        self.device = device
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_id('request')[4:]}"
        self._exports_first = False

    def request_stop(self) -> None:
        """Finish the current step, keep a resume point, give the job back and exit (SIGTERM)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stop.is_set()

    def run(self, *, max_jobs: int | None = None, exit_when_idle: bool = False) -> int:
        """Claim and run jobs and exports until stopped; return how many were run.

        Args:
            max_jobs: Stop after this many jobs.
            exit_when_idle: Return as soon as no job is claimable.
        """
        done = 0
        logger.info("worker %s ready (backend %s on %s)", self.worker_id, self.backend.name, self.device)
        while not self._stop.is_set() and (max_jobs is None or done < max_jobs):
            try:
                if self.run_once() is None:
                    if exit_when_idle:
                        break
                    self.stores.queue.wait(self.settings.worker_poll_s)
                    continue
            except DatabaseUnavailable:  # raised only once stopping: nothing is held that a lease does not cover
                break
            done += 1
        return done

    def run_once(self) -> str | None:
        """Claim one job or export and run it; return its outcome, or None when neither was claimable.

        The kind tried first alternates, so neither a queue of jobs nor one of exports keeps the other waiting.
        """
        kinds = (self._run_export, self._run_job) if self._exports_first else (self._run_job, self._run_export)
        self._exports_first = not self._exports_first
        for run in kinds:
            outcome = run()
            if outcome is not None:
                return outcome
        return None

    def _run_job(self) -> str | None:
        """Claim one job and run it; return its outcome, or None when no job was claimable."""
        settings = self.settings
        claim = self.stores.queue.claim(
            self.worker_id, lease_s=settings.lease_s, max_running_per_project=settings.max_running_jobs_per_project
        )
        if claim is None:
            return None
        job = self.stores.metadata.get_job(claim.job_id, project_id=claim.project_id)
        if job.status in TERMINAL_STATUSES or job.status == JobStatus.PAUSED:
            return "lost"
        organization = self.stores.metadata.get_organization(job.organization_id)
        renew = functools.partial(self._lease_queue.heartbeat, claim, lease_s=settings.lease_s)
        with LeaseKeeper(renew, held=f"job {claim.job_id}", every_s=settings.heartbeat_s) as lease:
            handle = JobHandle(
                settings=settings,
                stores=self.stores,
                claim=claim,
                job=job,
                organization_slug=organization.slug,
                stop_requested=self._stop,
                lease_lost=lease.lost,
            )
            outcome = run_job(handle, self.backend, device=self.device)
        logger.info("job %s: %s", job.id, outcome, extra={"job_id": job.id})
        return outcome

    def _run_export(self) -> str | None:
        """Claim one export and write it; return its outcome, or None when no export was claimable."""
        settings = self.settings
        claim = self.stores.queue.claim_export(
            self.worker_id, lease_s=settings.lease_s, max_running_per_project=settings.max_running_jobs_per_project
        )
        if claim is None:
            return None
        renew = functools.partial(self._lease_queue.heartbeat_export, claim, lease_s=settings.lease_s)
        with LeaseKeeper(renew, held=f"export {claim.export_id}", every_s=settings.heartbeat_s) as lease:
            handle = ExportHandle(
                settings=settings,
                stores=self.stores,
                claim=claim,
                stop_requested=self._stop,
                lease_lost=lease.lost,
            )
            outcome = run_export(handle)
        logger.info("export %s: %s", claim.export_id, outcome, extra={"job_id": claim.job_id})
        return outcome


def build_worker(settings: Settings, stores: Stores) -> Worker:
    """A worker for this machine: torch threads from the settings, the best backend, CUDA when present."""
    import torch

    from tunewright.trainer.backends import select_backend

    torch.set_num_threads(settings.torch_threads)
    return Worker(settings, stores, select_backend(), device=training_device())


def training_device() -> str:
    """``cuda`` when a GPU is present, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

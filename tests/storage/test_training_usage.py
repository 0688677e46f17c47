"""Training usage over every database: a step is billed in the transaction that records it, exactly once.

A job's `trained_tokens` is settled from its usage when it ends (succeeded, failed or cancelled), so the two
can never disagree.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest
from fixtures.queue import LEASE_S, Clock, claim, make_step
from fixtures.stores import make_event, make_job

from tunewright.storage.queue import SQLJobQueue
from tunewright.storage.records import JobStatus
from tunewright.storage.rows import to_params

if TYPE_CHECKING:
    from tunewright.storage.db import Database
    from tunewright.storage.metadata import SQLMetadataStore
    from tunewright.storage.records import JobRecord


def billed_steps(store: SQLMetadataStore, job_id: str) -> list[tuple[int, int]]:
    return [(row.step, row.trained_tokens) for row in store.list_training_usage(job_id, project_id="proj_a")]


def test_a_step_replayed_after_a_crash_is_billed_once(
    queue: SQLJobQueue, metadata_store: SQLMetadataStore, clock: Clock
) -> None:
    job = make_job(metadata_store)
    first = claim(queue, "w1")
    assert first is not None
    for step, tokens in ((1, 100), (2, 200), (3, 300)):
        assert queue.update(first, events=[make_event(job, f"step {step}")], usage=make_step(job, step, tokens))
    clock.advance(LEASE_S + 1)  # w1 died after step 3; its last resume point was at step 1
    second = claim(queue, "w2")
    assert second is not None
    for step, tokens in ((2, 200), (3, 300), (4, 400)):
        assert queue.update(second, usage=make_step(job, step, tokens))
    assert billed_steps(metadata_store, job.id) == [(1, 100), (2, 200), (3, 300), (4, 400)]
    assert queue.complete(second, status="succeeded")
    assert metadata_store.get_job(job.id, project_id="proj_a").trained_tokens == 1000


def test_a_step_whose_write_is_refused_bills_nothing(
    queue: SQLJobQueue, metadata_store: SQLMetadataStore, clock: Clock
) -> None:
    job = make_job(metadata_store)
    first = claim(queue, "w1")
    assert first is not None
    clock.advance(LEASE_S + 1)
    assert claim(queue, "w2") is not None
    assert not queue.update(first, events=[make_event(job)], usage=make_step(job, 1, 100))
    assert billed_steps(metadata_store, job.id) == []


def test_a_job_that_trained_no_step_ends_with_null_trained_tokens(
    queue: SQLJobQueue, metadata_store: SQLMetadataStore
) -> None:
    job = make_job(metadata_store)
    taken = claim(queue)
    assert taken is not None
    error = {"code": "invalid_training_file", "message": "line 3: bad", "param": "training_file"}
    assert queue.complete(taken, status="failed", error=error)
    assert metadata_store.get_job(job.id, project_id="proj_a").trained_tokens is None


def test_a_job_failing_mid_training_keeps_the_steps_it_trained(
    queue: SQLJobQueue, metadata_store: SQLMetadataStore
) -> None:
    job = make_job(metadata_store)
    taken = claim(queue)
    assert taken is not None
    assert queue.update(taken, usage=make_step(job, 1, 70))
    assert queue.complete(taken, status="failed", error={"code": "internal_error", "message": "x", "param": None})
    assert metadata_store.get_job(job.id, project_id="proj_a").trained_tokens == 70


def test_cancel_settles_trained_tokens_and_later_steps_are_refused(
    queue: SQLJobQueue, metadata_store: SQLMetadataStore
) -> None:
    job = make_job(metadata_store)
    taken = claim(queue)
    assert taken is not None
    assert queue.update(taken, status="running", usage=make_step(job, 1, 40))
    assert queue.update(taken, usage=make_step(job, 2, 2))
    cancelled = metadata_store.transition_job(
        job.id, project_id="proj_a", allowed=("running",), status=JobStatus.CANCELLED, finished_at=1
    )
    assert cancelled.trained_tokens == 42
    assert not queue.update(taken, usage=make_step(job, 3, 1000))
    assert billed_steps(metadata_store, job.id) == [(1, 40), (2, 2)]
    assert metadata_store.get_job(job.id, project_id="proj_a").trained_tokens == 42


def test_the_step_a_pause_interrupted_is_kept_only_while_the_job_is_paused(
    queue: SQLJobQueue, metadata_store: SQLMetadataStore
) -> None:
    job = make_job(metadata_store)
    taken = claim(queue)
    assert taken is not None
    assert queue.update(taken, status="running", usage=make_step(job, 1, 10))
    metadata_store.transition_job(job.id, project_id="proj_a", allowed=("running",), status=JobStatus.PAUSED)
    assert not queue.update(taken, usage=make_step(job, 2, 20))  # the worker learns of the pause
    assert metadata_store.keep_paused_step(make_event(job, "Step 2/9"), make_step(job, 2, 20))
    assert metadata_store.keep_paused_step(make_event(job, "Step 2/9"), make_step(job, 2, 20))  # a retry
    assert billed_steps(metadata_store, job.id) == [(1, 10), (2, 20)]
    metadata_store.transition_job(job.id, project_id="proj_a", allowed=("paused",), status=JobStatus.CANCELLED)
    assert not metadata_store.keep_paused_step(make_event(job), make_step(job, 3, 30))
    assert billed_steps(metadata_store, job.id) == [(1, 10), (2, 20)]
    assert metadata_store.get_job(job.id, project_id="proj_a").trained_tokens == 30


def test_a_worker_cannot_set_trained_tokens(queue: SQLJobQueue, metadata_store: SQLMetadataStore) -> None:
    make_job(metadata_store)
    taken = claim(queue)
    assert taken is not None
    with pytest.raises(ValueError, match="trained_tokens"):
        queue.complete(taken, status="succeeded", trained_tokens=5)


def test_a_cancel_waiting_on_a_step_in_flight_counts_that_step(
    metadata_store: SQLMetadataStore, database: Database
) -> None:
    """The step's transaction holds the job's row when the cancel arrives: the cancel waits, then counts it."""
    job = make_job(metadata_store, status="running")
    locked, release = threading.Event(), threading.Event()

    def step_in_flight() -> None:
        with database.transaction(immediate=True) as conn:
            conn.execute("UPDATE jobs SET updated_at = updated_at WHERE id = :id", {"id": job.id})
            conn.run("insert_training_usage", to_params(make_step(job, 1, 77)))
            locked.set()
            release.wait(10)

    cancelled: list[JobRecord] = []

    def cancel() -> None:
        cancelled.append(
            metadata_store.transition_job(job.id, project_id="proj_a", allowed=("running",), status="cancelled")
        )

    worker = threading.Thread(target=step_in_flight)
    worker.start()
    assert locked.wait(10)
    canceller = threading.Thread(target=cancel)
    canceller.start()
    canceller.join(0.5)
    assert canceller.is_alive()  # it waits for the step's transaction
    release.set()
    worker.join(10)
    canceller.join(10)
    assert cancelled[0].trained_tokens == 77

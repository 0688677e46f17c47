"""The webhook outbox over every database: deliveries written in the job's own transaction, leased one at a time."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import msgspec
import pytest
from fixtures.stores import make_job
from fixtures.webhooks import deliveries, make_endpoint

from tunewright.storage.errors import LimitExceeded, NotFound, StateConflict
from tunewright.storage.ids import new_id
from tunewright.storage.queue import SQLJobQueue
from tunewright.storage.records import ClaimedDelivery, WebhookEndpointRecord

if TYPE_CHECKING:
    from tunewright.storage.db import Database
    from tunewright.storage.metadata import SQLMetadataStore

OPENAI_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


def finish_running(store: SQLMetadataStore, queue: SQLJobQueue, status: str, project_id: str = "proj_a") -> str:
    """A job a worker claimed and ends with `status` (`succeeded` or `failed`); returns its id."""
    job = make_job(store, project_id)
    claim = queue.claim("w1", lease_s=30, max_running_per_project=1000)
    assert claim is not None
    assert claim.job_id == job.id
    assert queue.complete(claim, status=status)
    return job.id


@pytest.fixture
def queue(database: Database) -> SQLJobQueue:
    return SQLJobQueue(database)


def test_a_job_end_writes_one_delivery_per_subscribed_endpoint(
    metadata_store: SQLMetadataStore, queue: SQLJobQueue
) -> None:
    both = make_endpoint(metadata_store, "proj_a", ["fine_tuning.job.succeeded", "fine_tuning.job.failed"])
    also = make_endpoint(metadata_store, "proj_a", OPENAI_EVENTS)
    cancelled_only = make_endpoint(metadata_store, "proj_a", ["fine_tuning.job.cancelled"])
    other_project = make_endpoint(metadata_store, "proj_b", OPENAI_EVENTS)

    job_id = finish_running(metadata_store, queue, "succeeded")

    first, second = deliveries(metadata_store, both), deliveries(metadata_store, also)
    assert [len(first), len(second)] == [1, 1]
    assert deliveries(metadata_store, cancelled_only) == []
    assert deliveries(metadata_store, other_project, "proj_b") == []
    delivery = first[0]
    assert delivery.id.startswith("wh_")
    assert delivery.id != second[0].id  # one webhook-id per endpoint
    assert delivery.event_id == second[0].event_id  # one event
    assert (delivery.status, delivery.attempts, delivery.event_type) == ("pending", 0, "fine_tuning.job.succeeded")
    body = msgspec.json.decode(delivery.payload)
    assert body == {
        "id": delivery.event_id,
        "object": "event",
        "type": "fine_tuning.job.succeeded",
        "created_at": delivery.created_at,
        "data": {"id": job_id},
    }
    assert metadata_store.count_webhook_backlog() == 2


def test_a_failed_job_sends_the_failed_event(metadata_store: SQLMetadataStore, queue: SQLJobQueue) -> None:
    endpoint = make_endpoint(metadata_store, "proj_a", OPENAI_EVENTS)
    finish_running(metadata_store, queue, "failed")
    assert [d.event_type for d in deliveries(metadata_store, endpoint)] == ["fine_tuning.job.failed"]


def test_a_lost_lease_writes_no_delivery(metadata_store: SQLMetadataStore, database: Database) -> None:
    endpoint = make_endpoint(metadata_store, "proj_a", OPENAI_EVENTS)
    now = [time.time()]
    queue = SQLJobQueue(database, clock=lambda: now[0])
    make_job(metadata_store)
    first = queue.claim("w1", lease_s=30, max_running_per_project=10)
    assert first is not None
    now[0] += 31
    second = queue.claim("w2", lease_s=30, max_running_per_project=10)
    assert second is not None

    assert not queue.complete(first, status="succeeded")
    assert deliveries(metadata_store, endpoint) == []
    assert queue.complete(second, status="failed")
    assert [d.event_type for d in deliveries(metadata_store, endpoint)] == ["fine_tuning.job.failed"]


def test_cancel_writes_its_delivery_and_a_refused_cancel_none(metadata_store: SQLMetadataStore) -> None:
    endpoint = make_endpoint(metadata_store, "proj_a", OPENAI_EVENTS)
    job = make_job(metadata_store, status="queued")
    metadata_store.transition_job(job.id, project_id="proj_a", allowed=["queued"], status="cancelled")
    with pytest.raises(StateConflict):
        metadata_store.transition_job(job.id, project_id="proj_a", allowed=["queued"], status="cancelled")
    assert [d.event_type for d in deliveries(metadata_store, endpoint)] == ["fine_tuning.job.cancelled"]


def test_paused_goes_only_to_endpoints_that_list_it(metadata_store: SQLMetadataStore) -> None:
    openai_only = make_endpoint(metadata_store, "proj_a", OPENAI_EVENTS)
    paused = make_endpoint(metadata_store, "proj_a", ["fine_tuning.job.paused"])
    job = make_job(metadata_store, status="running")
    metadata_store.transition_job(job.id, project_id="proj_a", allowed=["running"], status="paused")
    metadata_store.transition_job(job.id, project_id="proj_a", allowed=["paused"], status="queued")  # resume: none
    assert deliveries(metadata_store, openai_only) == []
    assert [d.event_type for d in deliveries(metadata_store, paused)] == ["fine_tuning.job.paused"]


def test_a_worker_that_releases_a_job_paused_sends_paused(metadata_store: SQLMetadataStore, queue: SQLJobQueue) -> None:
    paused = make_endpoint(metadata_store, "proj_a", ["fine_tuning.job.paused"])
    make_job(metadata_store)
    claim = queue.claim("w1", lease_s=30, max_running_per_project=10)
    assert claim is not None
    assert queue.release(claim)  # back to the queue: no event
    claim = queue.claim("w1", lease_s=30, max_running_per_project=10)
    assert claim is not None
    assert queue.release(claim, status="paused")  # type: ignore[arg-type]
    assert [d.event_type for d in deliveries(metadata_store, paused)] == ["fine_tuning.job.paused"]


def test_concurrent_senders_never_claim_the_same_delivery(metadata_store: SQLMetadataStore) -> None:
    make_endpoint(metadata_store, "proj_a", OPENAI_EVENTS)
    for _ in range(24):
        job = make_job(metadata_store, status="queued")
        metadata_store.transition_job(job.id, project_id="proj_a", allowed=["queued"], status="cancelled")
    claimed: list[list[str]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def sender(index: int) -> None:
        barrier.wait()
        try:
            while batch := metadata_store.claim_webhook_deliveries(
                f"sender-{index}-{len(claimed[index])}", now=time.time(), lease_s=60, limit=3
            ):
                claimed[index].extend(c.delivery.id for c in batch)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    every = [delivery_id for ids in claimed for delivery_id in ids]
    assert len(every) == 24
    assert len(set(every)) == 24


def _one_claim(store: SQLMetadataStore, owner: str, now: float, lease_s: float = 10) -> ClaimedDelivery:
    batch = store.claim_webhook_deliveries(owner, now=now, lease_s=lease_s, limit=10)
    assert len(batch) == 1
    return batch[0]


def test_an_expired_lease_is_claimed_again_and_the_old_owner_cannot_finish(metadata_store: SQLMetadataStore) -> None:
    endpoint = make_endpoint(metadata_store, "proj_a", OPENAI_EVENTS)
    job = make_job(metadata_store, status="queued")
    metadata_store.transition_job(job.id, project_id="proj_a", allowed=["queued"], status="cancelled")
    now = time.time()
    first = _one_claim(metadata_store, "dead", now)
    assert metadata_store.claim_webhook_deliveries("other", now=now + 5, lease_s=10, limit=10) == []
    second = _one_claim(metadata_store, "alive", now + 11)
    assert second.delivery.id == first.delivery.id
    attempt = {"attempted_at": int(now), "status_code": 200, "error": None, "duration_ms": 3}
    finish = {"status": "succeeded", "next_attempt_at": None, "finished_at": int(now), "keep_attempts": 50}
    assert not metadata_store.finish_webhook_attempt(first, attempt=attempt, **finish)  # type: ignore[arg-type]
    assert metadata_store.finish_webhook_attempt(second, attempt=attempt, **finish)  # type: ignore[arg-type]
    (row,) = deliveries(metadata_store, endpoint)
    assert (row.status, row.attempts, row.lease_owner, row.next_attempt_at) == ("succeeded", 1, None, None)
    assert row.attempt_log == [attempt]
    assert metadata_store.count_webhook_backlog() == 0


def test_a_failed_attempt_waits_for_its_next_time(metadata_store: SQLMetadataStore) -> None:
    endpoint = make_endpoint(metadata_store, "proj_a", OPENAI_EVENTS)
    job = make_job(metadata_store, status="queued")
    metadata_store.transition_job(job.id, project_id="proj_a", allowed=["queued"], status="cancelled")
    now = time.time()
    claimed = _one_claim(metadata_store, "s1", now)
    attempts = [{"attempted_at": int(now), "status_code": 500, "error": None, "duration_ms": i} for i in range(3)]
    for index, attempt in enumerate(attempts):
        assert metadata_store.finish_webhook_attempt(
            claimed, status="pending", next_attempt_at=now + 30, finished_at=None, attempt=attempt, keep_attempts=2
        )
        if index < 2:
            assert metadata_store.claim_webhook_deliveries("early", now=now + 29, lease_s=10, limit=10) == []
            claimed = _one_claim(metadata_store, f"s{index + 2}", now + 30)
            now += 30
    (row,) = deliveries(metadata_store, endpoint)
    assert (row.status, row.attempts) == ("pending", 3)
    assert row.attempt_log == attempts[-2:]  # only the latest `keep_attempts`
    by_status = {
        status: metadata_store.list_webhook_deliveries(
            endpoint, project_id="proj_a", status=status, after=None, limit=5
        ).items
        for status in ("pending", "succeeded")
    }
    assert by_status == {"pending": [row], "succeeded": []}


def test_the_previous_secret_signs_only_while_its_grace_lasts(metadata_store: SQLMetadataStore) -> None:
    make_endpoint(
        metadata_store,
        "proj_a",
        OPENAI_EVENTS,
        previous_secret="whsec_previous",
        previous_secret_expires_at=int(time.time()) + 100,
    )
    for _ in range(2):
        job = make_job(metadata_store, status="queued")
        metadata_store.transition_job(job.id, project_id="proj_a", allowed=["queued"], status="cancelled")
    now = time.time()  # after the deliveries were written: they are due at the whole second they were written in
    within = metadata_store.claim_webhook_deliveries("s1", now=now, lease_s=10, limit=1)
    after = metadata_store.claim_webhook_deliveries("s2", now=now + 101, lease_s=10, limit=1)
    assert [c.secrets for c in within + after] == [("whsec_current", "whsec_previous"), ("whsec_current",)]


def test_endpoints_are_the_projects_own(metadata_store: SQLMetadataStore) -> None:
    endpoint = make_endpoint(metadata_store, "proj_a", OPENAI_EVENTS)
    for call in (
        lambda: metadata_store.get_webhook_endpoint(endpoint, project_id="proj_b"),
        lambda: metadata_store.update_webhook_endpoint(endpoint, project_id="proj_b", name="x"),
        lambda: metadata_store.delete_webhook_endpoint(endpoint, project_id="proj_b"),
        lambda: deliveries(metadata_store, endpoint, "proj_b"),
    ):
        with pytest.raises(NotFound):
            call()
    assert metadata_store.list_webhook_endpoints(project_id="proj_b", after=None, limit=10).items == []
    assert metadata_store.get_webhook_endpoint(endpoint, project_id="proj_a").event_types == OPENAI_EVENTS


def test_an_endpoint_limit_per_project(metadata_store: SQLMetadataStore) -> None:
    now = int(time.time())
    for index in range(3):
        record = WebhookEndpointRecord(
            id=new_id("webhook_endpoint"),
            project_id="proj_a",
            created_at=now,
            updated_at=now,
            name=f"hook {index}",
            url="https://hooks.example.com/",
            event_types=OPENAI_EVENTS,
            secret="whsec_x",
        )
        if index < 2:
            metadata_store.create_webhook_endpoint(record, max_per_project=2)
        else:
            with pytest.raises(LimitExceeded):
                metadata_store.create_webhook_endpoint(record, max_per_project=2)


def test_deleting_an_endpoint_drops_its_deliveries(metadata_store: SQLMetadataStore) -> None:
    endpoint = make_endpoint(metadata_store, "proj_a", OPENAI_EVENTS)
    job = make_job(metadata_store, status="queued")
    metadata_store.transition_job(job.id, project_id="proj_a", allowed=["queued"], status="cancelled")
    claimed = _one_claim(metadata_store, "s1", time.time())
    metadata_store.delete_webhook_endpoint(endpoint, project_id="proj_a")
    assert metadata_store.count_webhook_backlog() == 0
    attempt = {"attempted_at": 0, "status_code": 200, "error": None, "duration_ms": 1}
    assert not metadata_store.finish_webhook_attempt(
        claimed, status="succeeded", next_attempt_at=None, finished_at=0, attempt=attempt, keep_attempts=5
    )


def test_finished_deliveries_are_swept_after_their_retention(metadata_store: SQLMetadataStore) -> None:
    endpoint = make_endpoint(metadata_store, "proj_a", OPENAI_EVENTS)
    for _ in range(2):
        job = make_job(metadata_store, status="queued")
        metadata_store.transition_job(job.id, project_id="proj_a", allowed=["queued"], status="cancelled")
    first, _second = metadata_store.claim_webhook_deliveries("s1", now=time.time(), lease_s=10, limit=2)
    attempt = {"attempted_at": 0, "status_code": 200, "error": None, "duration_ms": 1}
    assert metadata_store.finish_webhook_attempt(
        first, status="succeeded", next_attempt_at=None, finished_at=1000, attempt=attempt, keep_attempts=5
    )
    assert metadata_store.delete_finished_webhook_deliveries(finished_before=1000, limit=10) == 0
    assert metadata_store.delete_finished_webhook_deliveries(finished_before=1001, limit=10) == 1
    assert [d.status for d in deliveries(metadata_store, endpoint)] == ["pending"]  # pending ones stay


def test_a_released_lease_makes_the_delivery_due_at_once(metadata_store: SQLMetadataStore) -> None:
    make_endpoint(metadata_store, "proj_a", OPENAI_EVENTS)
    job = make_job(metadata_store, status="queued")
    metadata_store.transition_job(job.id, project_id="proj_a", allowed=["queued"], status="cancelled")
    now = time.time()
    stopping = _one_claim(metadata_store, "stopping", now, lease_s=3600)
    metadata_store.release_webhook_delivery(stopping)
    again = _one_claim(metadata_store, "other", now)
    assert (again.delivery.id, again.delivery.attempts) == (stopping.delivery.id, 0)
    metadata_store.release_webhook_delivery(stopping)  # no longer the holder: nothing happens
    assert metadata_store.claim_webhook_deliveries("third", now=now, lease_s=10, limit=5) == []

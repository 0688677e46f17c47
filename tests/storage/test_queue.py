"""Contract suite of the JobQueue, over every database (SQLite in tmp_path, PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest
from fixtures.queue import LEASE_S, ROOMY, Clock, claim, make_step
from fixtures.stores import make_event, make_job

from tunewright.storage.db import PostgresDatabase, SQLiteDatabase
from tunewright.storage.ids import new_id
from tunewright.storage.metadata import SQLMetadataStore
from tunewright.storage.queue import SQLJobQueue
from tunewright.storage.records import FileRecord, JobRecord, ModelRecord

if TYPE_CHECKING:
    from collections.abc import Callable

    from tunewright.storage.db import Database
    from tunewright.storage.records import Claim


@pytest.fixture
def store(metadata_store: SQLMetadataStore) -> SQLMetadataStore:
    return metadata_store


def claimed_ids(queue: SQLJobQueue, n: int, cap: int = ROOMY, clock: Clock | None = None) -> list[str | None]:
    """Claim `n` times in a row (a second apart), keeping every claim; None where nothing was claimable."""
    ids: list[str | None] = []
    for _ in range(n):
        taken = claim(queue, cap=cap)
        ids.append(None if taken is None else taken.job_id)
        if clock is not None:
            clock.advance(1)
    return ids


# --- claiming, order and fairness -------------------------------------------------------------------


def test_claim_on_empty_queue_returns_none(queue: SQLJobQueue) -> None:
    assert claim(queue) is None
    assert queue.depth() == 0


def test_claim_sets_lease_and_counts_the_attempt(queue: SQLJobQueue, store: SQLMetadataStore, clock: Clock) -> None:
    job = make_job(store)
    taken = claim(queue, "worker-7")
    assert taken is not None
    assert (taken.job_id, taken.project_id, taken.worker_id) == (job.id, job.project_id, "worker-7")
    assert taken.status == "validating_files"
    assert taken.attempt == 1
    assert taken.lease_expires_at == pytest.approx(clock.now + LEASE_S)
    row = store.get_job(job.id, project_id=job.project_id)
    assert row.status == "validating_files"  # the worker moves it to running
    assert (row.lease_owner, row.attempts) == ("worker-7", 1)
    assert row.lease_expires_at == pytest.approx(clock.now + LEASE_S)
    assert claim(queue, "worker-8") is None


def test_jobs_of_one_project_are_claimed_oldest_first(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    jobs = [make_job(store, status=status) for status in ("queued", "validating_files", "queued")]
    assert claimed_ids(queue, 4) == [job.id for job in jobs] + [None]


def test_projects_are_served_round_robin(queue: SQLJobQueue, store: SQLMetadataStore, clock: Clock) -> None:
    a1, a2, a3 = (make_job(store, "proj_a") for _ in range(3))
    b1 = make_job(store, "proj_b")
    assert claimed_ids(queue, 4, clock=clock) == [a1.id, b1.id, a2.id, a3.id]


def test_project_served_longest_ago_goes_first(queue: SQLJobQueue, store: SQLMetadataStore, clock: Clock) -> None:
    a = [make_job(store, "proj_a") for _ in range(3)]
    b = [make_job(store, "proj_b") for _ in range(2)]
    assert claimed_ids(queue, 2, clock=clock) == [a[0].id, b[0].id]
    c1 = make_job(store, "proj_c")  # never served: ahead of both
    assert claimed_ids(queue, 5, clock=clock) == [c1.id, a[1].id, b[1].id, a[2].id, None]


def test_project_at_its_cap_is_skipped_until_complete(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    a1, a2 = make_job(store, "proj_a"), make_job(store, "proj_a")
    b1 = make_job(store, "proj_b")
    first = claim(queue, cap=1)
    assert first is not None
    assert first.job_id == a1.id
    assert claimed_ids(queue, 2, cap=1) == [b1.id, None]
    assert queue.depth() == 1  # a2 waits: the cap does not hide it from the depth
    assert queue.complete(first, status="succeeded")
    assert claimed_ids(queue, 1, cap=1) == [a2.id]


def test_project_at_its_cap_is_skipped_until_release(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    a1, _a2 = make_job(store, "proj_a"), make_job(store, "proj_a")
    first = claim(queue, cap=1)
    assert first is not None
    assert claim(queue, cap=1) is None
    assert queue.release(first)
    again = claim(queue, "w2", cap=1)
    assert again is not None
    assert (again.job_id, again.attempt, again.status) == (a1.id, 2, "queued")


def test_cap_counts_jobs_the_worker_moved_to_running(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    a1, _a2 = make_job(store, "proj_a"), make_job(store, "proj_a")
    first = claim(queue, cap=1)
    assert first is not None
    store.transition_job(a1.id, project_id=a1.project_id, allowed=["validating_files"], status="running")
    assert claim(queue, cap=1) is None
    assert claim(queue, cap=2) is not None


def test_a_projects_own_cap_overrides_the_deployments(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    org = store.create_organization(name="Caps", slug="caps").id
    roomy = store.create_project(organization_id=org, name="roomy", max_running_jobs=3)
    tight = store.create_project(organization_id=org, name="tight", max_running_jobs=1)
    r = [make_job(store, roomy.id) for _ in range(4)]
    t = [make_job(store, tight.id) for _ in range(2)]
    d = [make_job(store, "proj_default") for _ in range(3)]  # no project row: the deployment's cap (2)
    taken = claimed_ids(queue, 9, cap=2)
    assert sorted(i for i in taken if i) == sorted([*[j.id for j in r[:3]], t[0].id, *[j.id for j in d[:2]]])
    assert taken[-3:] == [None, None, None]
    store.update_project(tight.id, organization_id=org, max_running_jobs=2)
    assert claimed_ids(queue, 1, cap=2) == [t[1].id]


def test_paused_and_terminal_jobs_are_never_claimed(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    for status in ("paused", "succeeded", "failed", "cancelled"):
        make_job(store, status=status)
    assert claim(queue) is None
    assert queue.depth() == 0


# --- leases -----------------------------------------------------------------------------------------


def test_heartbeat_extends_the_lease(queue: SQLJobQueue, store: SQLMetadataStore, clock: Clock) -> None:
    job = make_job(store)
    taken = claim(queue)
    assert taken is not None
    clock.advance(LEASE_S - 1)
    assert queue.heartbeat(taken, lease_s=LEASE_S)
    clock.advance(LEASE_S - 1)  # past the first deadline, inside the extended one
    assert claim(queue, "w2") is None
    assert store.get_job(job.id, project_id=job.project_id).lease_expires_at == pytest.approx(clock.now + 1)


def test_expired_lease_is_reclaimed_and_the_first_worker_loses_it(
    queue: SQLJobQueue, store: SQLMetadataStore, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    job = make_job(store)
    first = claim(queue, "w1")
    assert first is not None
    store.transition_job(job.id, project_id=job.project_id, allowed=["validating_files"], status="running")
    clock.advance(LEASE_S + 1)  # w1 died
    assert queue.depth() == 1
    second = claim(queue, "w2")
    assert second is not None
    assert (second.job_id, second.status, second.attempt) == (job.id, "running", 2)
    caplog.clear()
    with caplog.at_level("INFO", logger="tunewright.storage.queue"):
        assert not queue.heartbeat(first, lease_s=LEASE_S)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"worker w1 lost its lease on job {job.id} (now running, held by w2)")
    ]
    assert not queue.complete(first, status="succeeded")
    assert not queue.release(first)
    assert queue.heartbeat(second, lease_s=LEASE_S)
    row = store.get_job(job.id, project_id=job.project_id)
    assert (row.status, row.lease_owner, row.attempts) == ("running", "w2", 2)


def test_expired_lease_of_the_same_worker_is_a_new_attempt(
    queue: SQLJobQueue, store: SQLMetadataStore, clock: Clock
) -> None:
    make_job(store)
    first = claim(queue, "w1")
    assert first is not None
    clock.advance(LEASE_S + 1)
    second = claim(queue, "w1")  # the same worker id after a restart
    assert second is not None
    assert second.attempt == 2
    assert not queue.heartbeat(first, lease_s=LEASE_S)
    assert queue.heartbeat(second, lease_s=LEASE_S)


@pytest.mark.parametrize("status", ["cancelled", "paused"])
def test_cancel_or_pause_by_the_api_ends_the_lease(
    queue: SQLJobQueue, store: SQLMetadataStore, status: str, caplog: pytest.LogCaptureFixture
) -> None:
    job = make_job(store)
    taken = claim(queue)
    assert taken is not None
    store.transition_job(job.id, project_id=job.project_id, allowed=["validating_files"], status="running")
    store.transition_job(job.id, project_id=job.project_id, allowed=["running"], status=status)
    caplog.clear()
    with caplog.at_level("INFO", logger="tunewright.storage.queue"):
        assert not queue.heartbeat(taken, lease_s=LEASE_S)
        assert not queue.complete(taken, status="succeeded")
        assert not queue.release(taken)
    assert store.get_job(job.id, project_id=job.project_id).status == status
    assert claim(queue, "w2") is None
    # A pause or a cancel is the normal way a job leaves its worker: said at INFO, not as a lost lease.
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"job {job.id} was {status}: worker w1 stops it"),
        ("INFO", f"job {job.id} was {status}: worker w1 stops it (before succeeded)"),
        ("INFO", f"job {job.id} was {status}: worker w1 stops it (before queued)"),
    ]


def test_release_to_queued_makes_the_job_claimable_again(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    job = make_job(store)
    taken = claim(queue)
    assert taken is not None
    store.transition_job(job.id, project_id=job.project_id, allowed=["validating_files"], status="running")
    event = make_event(job, "Worker stopping; job requeued")
    assert queue.release(taken, event=event)
    row = store.get_job(job.id, project_id=job.project_id)
    assert (row.status, row.lease_owner, row.lease_expires_at) == ("queued", None, None)
    messages = [e.message for e in store.list_events(job.id, project_id=job.project_id, after=None, limit=10).items]
    assert "Worker stopping; job requeued" in messages
    assert not queue.heartbeat(taken, lease_s=LEASE_S)
    again = claim(queue, "w2")
    assert again is not None
    assert (again.job_id, again.status, again.attempt) == (job.id, "queued", 2)


def test_release_to_paused_keeps_the_job_out_of_the_queue(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    make_job(store)
    taken = claim(queue)
    assert taken is not None
    assert queue.release(taken, status="paused")
    assert claim(queue) is None
    assert queue.depth() == 0


def test_complete_sets_status_fields_event_and_finished_at(
    queue: SQLJobQueue, store: SQLMetadataStore, clock: Clock
) -> None:
    job = make_job(store)
    taken = claim(queue)
    assert taken is not None
    assert queue.update(taken, usage=make_step(job, 1, 1000))
    assert queue.update(taken, usage=make_step(job, 2, 234))
    event = make_event(job, "The job has successfully completed")
    done = queue.complete(
        taken,
        status="succeeded",
        event=event,
        fine_tuned_model="ft:tiny:org:x:abc",
        result_files=["file-results"],
    )
    assert done
    row = store.get_job(job.id, project_id=job.project_id)
    assert row.status == "succeeded"
    assert (row.fine_tuned_model, row.trained_tokens, row.result_files) == ("ft:tiny:org:x:abc", 1234, ["file-results"])
    assert row.finished_at == int(clock.now)
    assert (row.lease_owner, row.lease_expires_at) == (None, None)
    events = store.list_events(job.id, project_id=job.project_id, after=None, limit=10).items
    assert event.id in {e.id for e in events}
    assert not queue.complete(taken, status="succeeded")  # once only


def test_complete_as_failed_keeps_the_given_finished_at_and_error(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    job = make_job(store)
    taken = claim(queue)
    assert taken is not None
    error = {"code": "invalid_training_file", "message": "line 3: bad", "param": "training_file"}
    assert queue.complete(taken, status="failed", error=error, finished_at=123)
    row = store.get_job(job.id, project_id=job.project_id)
    assert (row.status, row.error, row.finished_at) == ("failed", error, 123)


def test_update_moves_a_held_job_keeping_the_lease(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    job = make_job(store)
    taken = claim(queue)
    assert taken is not None
    event = make_event(job, "Step 1/2: training loss=1.0")
    assert queue.update(taken, status="running", events=[event], estimated_finish=99, hyperparameters={"n_epochs": 2})
    row = store.get_job(job.id, project_id=job.project_id)
    assert (row.status, row.estimated_finish, row.hyperparameters) == ("running", 99, {"n_epochs": 2})
    assert row.lease_owner == taken.worker_id
    assert event.id in {e.id for e in store.list_events(job.id, project_id=job.project_id, after=None, limit=10).items}
    assert queue.heartbeat(taken, lease_s=LEASE_S)
    with pytest.raises(ValueError, match="held job"):
        queue.update(taken, status="succeeded")
    with pytest.raises(ValueError, match="attempts"):
        queue.update(taken, attempts=7)


def test_update_after_a_pause_writes_nothing(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    job = make_job(store)
    taken = claim(queue)
    assert taken is not None
    assert queue.update(taken, status="running")
    store.transition_job(job.id, project_id=job.project_id, allowed=["running"], status="paused")
    event = make_event(job, "Step 2/2")
    assert not queue.update(taken, events=[event], estimated_finish=5)
    row = store.get_job(job.id, project_id=job.project_id)
    assert (row.status, row.estimated_finish) == ("paused", None)
    assert event.id not in {
        e.id for e in store.list_events(job.id, project_id=job.project_id, after=None, limit=10).items
    }


def _results_file(job: JobRecord) -> FileRecord:
    return FileRecord(
        id=new_id("file"),
        project_id=job.project_id,
        bytes=10,
        created_at=int(time.time()),
        filename="step_metrics.csv",
        purpose="fine-tune-results",
        blob_key=f"{job.project_id}/files/results",
        sha256="0" * 64,
    )


def _model(job: JobRecord) -> ModelRecord:
    return ModelRecord(
        id=f"ft:tiny:org::{job.model_slot}",
        project_id=job.project_id,
        organization_id=job.organization_id,
        created=int(time.time()),
        owned_by="org",
        base_model="tiny",
        job_id=job.id,
        adapter_key=f"{job.project_id}/adapters/{job.id}/final",
    )


def test_complete_publishes_files_and_models_and_ends_their_intents(
    queue: SQLJobQueue, store: SQLMetadataStore
) -> None:
    job = make_job(store)
    taken = claim(queue)
    assert taken is not None
    results, model = _results_file(job), _model(job)
    adapter = f"{model.adapter_key}/adapter_model.safetensors"
    for key in (results.blob_key, adapter):
        store.begin_blob(key, now=1)
    assert queue.complete(taken, status="succeeded", files=[results], models=[model], published_blobs=[adapter])
    assert store.get_file(results.id, project_id=job.project_id).purpose == "fine-tune-results"
    assert store.get_model(model.id, project_id=job.project_id).adapter_key == model.adapter_key
    assert store.stale_blobs(created_before=10, limit=10) == []


def test_a_lost_lease_publishes_nothing_and_keeps_the_intents(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    job = make_job(store)
    taken = claim(queue)
    assert taken is not None
    store.transition_job(job.id, project_id=job.project_id, allowed=["validating_files"], status="cancelled")
    results, model = _results_file(job), _model(job)
    store.begin_blob(results.blob_key, now=1)
    assert not queue.complete(taken, status="succeeded", files=[results], models=[model])
    assert store.list_models(project_id=job.project_id) == []
    assert store.stale_blobs(created_before=10, limit=10) == [results.blob_key]


def test_release_and_complete_refuse_other_statuses(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    make_job(store)
    taken = claim(queue)
    assert taken is not None
    with pytest.raises(ValueError, match="release status"):
        queue.release(taken, status="running")
    with pytest.raises(ValueError, match="complete status"):
        queue.complete(taken, status="cancelled")
    with pytest.raises(ValueError, match="lease_owner"):
        queue.complete(taken, status="succeeded", lease_owner="w2")
    assert queue.heartbeat(taken, lease_s=LEASE_S)  # nothing was written


def test_depth_counts_claimable_jobs(queue: SQLJobQueue, store: SQLMetadataStore, clock: Clock) -> None:
    for status in ("validating_files", "queued", "queued", "paused", "succeeded", "cancelled"):
        make_job(store, status=status)
    assert queue.depth() == 3
    assert claim(queue) is not None
    assert queue.depth() == 2
    clock.advance(LEASE_S + 1)  # its worker died: waiting again
    assert queue.depth() == 3


# --- waking -----------------------------------------------------------------------------------------


def test_wait_returns_by_its_timeout(queue: SQLJobQueue) -> None:
    started = time.monotonic()
    queue.wait(0.2)
    assert time.monotonic() - started < 2


def _later(action: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        time.sleep(0.3)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_wait_wakes_when_a_job_is_inserted(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    thread = _later(lambda: make_job(store))
    started = time.monotonic()
    queue.wait(20)
    thread.join()
    assert time.monotonic() - started < 10
    assert claim(queue) is not None


def test_wait_wakes_when_a_job_is_released(queue: SQLJobQueue, store: SQLMetadataStore) -> None:
    make_job(store)
    taken = claim(queue)
    assert taken is not None
    thread = _later(lambda: queue.release(taken))
    started = time.monotonic()
    queue.wait(20)
    thread.join()
    assert time.monotonic() - started < 10


# --- concurrency ------------------------------------------------------------------------------------

N_JOBS = 200


def _fill(store: SQLMetadataStore, n: int = N_JOBS) -> set[str]:
    with store.database.transaction(immediate=True):  # one transaction: inserts join it
        return {make_job(store, f"proj_{i % 5}", status="queued").id for i in range(n)}


def _assert_all_done_once(store: SQLMetadataStore, expected: set[str], claimed: list[str]) -> None:
    assert len(claimed) == len(expected)
    assert set(claimed) == expected
    assert store.count_jobs_by_status() == {"succeeded": len(expected)}


def _in_threads(work: Callable[[str], None], n: int = 8) -> None:
    """Run `work(worker_id)` on `n` threads released together; re-raise the first error."""
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(worker: str) -> None:
        start.wait()
        try:
            work(worker)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_threads_claim_every_job_exactly_once(database: Database, store: SQLMetadataStore) -> None:
    expected = _fill(store)
    queue = SQLJobQueue(database)
    claimed: list[str] = []  # list.append is atomic

    def work(worker: str) -> None:
        while (taken := queue.claim(worker, lease_s=LEASE_S, max_running_per_project=ROOMY)) is not None:
            claimed.append(taken.job_id)
            assert queue.complete(taken, status="succeeded")

    _in_threads(work)
    _assert_all_done_once(store, expected, claimed)


def test_cap_holds_under_concurrent_claims(database: Database, store: SQLMetadataStore) -> None:
    with store.database.transaction(immediate=True):
        for i in range(30):
            make_job(store, f"proj_{i % 3}")
    queue = SQLJobQueue(database)
    claims: list[Claim | None] = []
    _in_threads(lambda worker: claims.append(queue.claim(worker, lease_s=LEASE_S, max_running_per_project=1)))
    taken = [c for c in claims if c is not None]
    assert sorted(c.project_id for c in taken) == ["proj_0", "proj_1", "proj_2"]


WORKER_SCRIPT = """
import json, sys
from tunewright.storage.db import open_database
from tunewright.storage.queue import SQLJobQueue

database = open_database(sys.argv[1], pool_size=2)
queue = SQLJobQueue(database)
print("ready", flush=True)
sys.stdin.readline()
claimed = []
while (claim := queue.claim(sys.argv[2], lease_s=30, max_running_per_project=1000)) is not None:
    claimed.append(claim.job_id)
    assert queue.complete(claim, status="succeeded")
database.close()
print(json.dumps(claimed), flush=True)
"""


def _url(database: Database) -> str:
    if isinstance(database, PostgresDatabase):
        return database.url
    assert isinstance(database, SQLiteDatabase)
    return f"sqlite:///{database.path}"


def test_processes_claim_every_job_exactly_once(database: Database, store: SQLMetadataStore) -> None:
    expected = _fill(store)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, _url(database), f"p{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for worker in workers:  # both are up before either starts claiming
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=60)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    assert [worker.returncode for worker in workers] == [0, 0]
    claimed = [job_id for output in outputs for job_id in json.loads(output.strip().splitlines()[-1])]
    _assert_all_done_once(store, expected, claimed)


def test_a_job_starts_once_and_its_wait_duration_and_tokens_are_counted(
    queue: SQLJobQueue, store: SQLMetadataStore, clock: Clock
) -> None:
    created = int(clock.now)
    job = make_job(store, created_at=created)
    clock.advance(30)
    first = claim(queue)
    assert first is not None
    assert queue.update(first, status="running")
    assert store.get_job(job.id, project_id=job.project_id).started_at == created + 30
    clock.advance(LEASE_S + 1)  # the worker dies; another takes the job over and runs it again
    again = claim(queue, "w2")
    assert again is not None
    assert queue.update(again, status="running")
    assert store.get_job(job.id, project_id=job.project_id).started_at == created + 30
    clock.advance(100)
    assert queue.update(again, usage=make_step(job, 1, 200))
    assert queue.update(again, usage=make_step(job, 2, 300))
    assert queue.complete(again, status="succeeded")  # trained_tokens: the sum of the steps' usage
    queued = make_job(store, "proj_b", created_at=created)  # cancelled before it ever ran
    store.transition_job(
        queued.id, project_id="proj_b", allowed=["validating_files"], status="cancelled", finished_at=created + 7
    )
    make_job(store, "proj_b", created_at=created + 1, trained_tokens=20)  # not started: no wait yet
    make_job(store, "proj_b", created_at=created + 2, base_model="other", trained_tokens=3)

    assert [(t.project_id, t.base_model, t.tokens) for t in store.training_tokens_by_project()] == [
        ("proj_a", "tiny", 500),
        ("proj_b", "tiny", 20),
        ("proj_b", "other", 3),
    ]
    times = store.job_times(wait_bounds=(10, 60), duration_bounds=(10, 200))
    assert (times.queue_wait.counts, times.queue_wait.total_s) == ([0, 1, 0], 30)
    assert {k: (v.counts, v.total_s) for k, v in times.duration.items()} == {
        "succeeded": ([0, 1, 0], 131),  # from its first running to its end, the takeover included
        "cancelled": ([1, 0, 0], 7),  # never ran: from its creation
    }

"""The exports' queue (storage/export_queue.py) and store, over every database (SQLite in tmp_path, PostgreSQL)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pytest
from fixtures.queue import LEASE_S, ROOMY, Clock
from fixtures.stores import make_job

from tunewright.storage.errors import InvalidCursor, NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.records import ExportRecord, FileRecord

if TYPE_CHECKING:
    from tunewright.storage.metadata import SQLMetadataStore
    from tunewright.storage.queue import SQLJobQueue
    from tunewright.storage.records import ExportClaim, JobRecord

_created = itertools.count(1_700_000_000)


def make_export(store: SQLMetadataStore, job: JobRecord, **fields: object) -> ExportRecord:
    """Insert a queued export of `job`; `created_at` grows by a second per export (FIFO is the order of calls)."""
    values: dict[str, object] = {
        "id": new_id("export"),
        "project_id": job.project_id,
        "job_id": job.id,
        "created_at": next(_created),
        "format": "adapter",
        "checkpoint": f"ft:tiny:org::{job.model_slot}",
        "status": "queued",
        **fields,
    }
    record = ExportRecord(**values)  # type: ignore[arg-type]
    store.insert_export(record)
    return record


def take(queue: SQLJobQueue, worker: str = "w1", cap: int = ROOMY) -> ExportClaim | None:
    return queue.claim_export(worker, lease_s=LEASE_S, max_running_per_project=cap)


def result_file(project_id: str) -> FileRecord:
    file_id = new_id("file")
    return FileRecord(
        id=file_id,
        project_id=project_id,
        bytes=3,
        created_at=1,
        filename="m.gguf",
        purpose="fine-tune-results",
        blob_key=f"{project_id}/files/{file_id}",
        sha256="0" * 64,
    )


def test_an_export_is_claimed_once_with_a_lease_and_its_attempt(
    queue: SQLJobQueue, metadata_store: SQLMetadataStore, clock: Clock
) -> None:
    job = make_job(metadata_store, status="succeeded")
    export = make_export(metadata_store, job)
    assert take(queue, "w7") is not None
    assert take(queue, "w8") is None  # the lease is live
    row = metadata_store.get_export(export.id, job_id=job.id, project_id=job.project_id)
    assert (row.status, row.lease_owner, row.attempts) == ("queued", "w7", 1)
    assert row.lease_expires_at == pytest.approx(clock.now + LEASE_S)


def test_a_claim_names_the_export_its_job_and_project(queue: SQLJobQueue, metadata_store: SQLMetadataStore) -> None:
    job = make_job(metadata_store, status="succeeded")
    export = make_export(metadata_store, job)
    claim = take(queue, "w7")
    assert claim is not None
    assert (claim.export_id, claim.job_id, claim.project_id) == (export.id, job.id, job.project_id)
    assert (claim.worker_id, claim.attempt, claim.status) == ("w7", 1, "queued")


def test_an_expired_lease_lets_another_worker_take_over_and_fences_the_first(
    queue: SQLJobQueue, metadata_store: SQLMetadataStore, clock: Clock
) -> None:
    job = make_job(metadata_store, status="succeeded")
    export = make_export(metadata_store, job, format="gguf", quantization="f16")
    first = take(queue, "w1")
    assert first is not None
    assert queue.start_export(first, quantization="q8_0")
    assert queue.heartbeat_export(first, lease_s=LEASE_S)
    clock.advance(LEASE_S + 1)
    second = take(queue, "w2")
    assert second is not None
    assert (second.export_id, second.status, second.attempt) == (export.id, "running", 2)
    assert not queue.heartbeat_export(first, lease_s=LEASE_S)
    assert not queue.complete_export(first, status="failed", error={"code": "x", "message": "late", "param": None})
    file = result_file(job.project_id)
    metadata_store.begin_blob(file.blob_key, now=1)
    assert queue.complete_export(second, status="succeeded", file=file)
    row = metadata_store.get_export(export.id, job_id=job.id, project_id=job.project_id)
    assert (row.status, row.file_id, row.error, row.quantization) == ("succeeded", file.id, None, "q8_0")
    assert (row.lease_owner, row.lease_expires_at) == (None, None)
    assert row.finished_at == int(clock.now)
    assert metadata_store.get_file(file.id, project_id=job.project_id).purpose == "fine-tune-results"
    assert metadata_store.stale_blobs(created_before=10**12, limit=10) == []  # published: no orphan
    assert take(queue) is None  # an ended export is never claimed again


def test_a_lost_lease_publishes_no_file(queue: SQLJobQueue, metadata_store: SQLMetadataStore, clock: Clock) -> None:
    job = make_job(metadata_store, status="succeeded")
    make_export(metadata_store, job)
    first = take(queue, "w1")
    assert first is not None
    clock.advance(LEASE_S + 1)
    assert take(queue, "w2") is not None
    file = result_file(job.project_id)
    metadata_store.begin_blob(file.blob_key, now=1)
    assert not queue.complete_export(first, status="succeeded", file=file)
    with pytest.raises(NotFound):
        metadata_store.get_file(file.id, project_id=job.project_id)
    assert metadata_store.stale_blobs(created_before=10**12, limit=10) == [file.blob_key]  # left to the sweeper


def test_a_released_export_is_claimable_again(queue: SQLJobQueue, metadata_store: SQLMetadataStore) -> None:
    job = make_job(metadata_store, status="succeeded")
    export = make_export(metadata_store, job)
    first = take(queue, "w1")
    assert first is not None
    assert queue.release_export(first)
    assert not queue.release_export(first)  # the lease went with it
    again = take(queue, "w2")
    assert again is not None
    assert (again.export_id, again.status, again.attempt) == (export.id, "queued", 2)


def test_the_project_holding_fewer_exports_goes_first_and_caps_hold(
    queue: SQLJobQueue, metadata_store: SQLMetadataStore
) -> None:
    job_a = make_job(metadata_store, "proj_a", status="succeeded")
    job_b = make_job(metadata_store, "proj_b", status="succeeded")
    a1, a2, a3 = (make_export(metadata_store, job_a) for _ in range(3))
    b1 = make_export(metadata_store, job_b)
    claimed = [take(queue, f"w{i}", cap=2) for i in range(5)]
    assert [c.export_id if c else None for c in claimed] == [a1.id, b1.id, a2.id, None, None]
    assert claimed[0] is not None
    assert queue.complete_export(claimed[0], status="failed", error={"code": "x", "message": "y", "param": None})
    last = take(queue, cap=2)
    assert last is not None and last.export_id == a3.id


def test_start_export_sets_only_the_options(queue: SQLJobQueue, metadata_store: SQLMetadataStore) -> None:
    job = make_job(metadata_store, status="succeeded")
    make_export(metadata_store, job, format="merged")
    claim = take(queue)
    assert claim is not None
    with pytest.raises(ValueError, match="file_id"):
        queue.start_export(claim, file_id="file-x")
    with pytest.raises(ValueError, match="succeeded"):
        queue.complete_export(claim, status="running")


def test_exports_are_listed_newest_first_per_job_and_project(metadata_store: SQLMetadataStore) -> None:
    job = make_job(metadata_store, status="succeeded")
    other = make_job(metadata_store, status="succeeded")
    first, second, third = (make_export(metadata_store, job) for _ in range(3))
    make_export(metadata_store, other)
    page = metadata_store.list_exports(job.id, project_id=job.project_id, after=None, limit=2)
    assert ([e.id for e in page.items], page.has_more) == ([third.id, second.id], True)
    page = metadata_store.list_exports(job.id, project_id=job.project_id, after=second.id, limit=2)
    assert ([e.id for e in page.items], page.has_more) == ([first.id], False)
    with pytest.raises(InvalidCursor):
        metadata_store.list_exports(other.id, project_id=job.project_id, after=first.id, limit=2)
    with pytest.raises(NotFound):
        metadata_store.list_exports(job.id, project_id="proj_other", after=None, limit=2)
    with pytest.raises(NotFound):
        metadata_store.get_export(first.id, job_id=job.id, project_id="proj_other")
    with pytest.raises(NotFound):
        metadata_store.get_export(first.id, job_id=other.id, project_id=job.project_id)

"""Contract suite for MetadataStore, run over SQLite and PostgreSQL (the `metadata_store` fixture)."""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from tunewright.storage.errors import Conflict, InvalidCursor, LimitExceeded, NotFound, StateConflict
from tunewright.storage.ids import new_id
from tunewright.storage.records import (
    ApiKeyRecord,
    CheckpointRecord,
    FileRecord,
    JobEventRecord,
    JobRecord,
    ModelRecord,
    OrganizationRecord,
    PermissionRecord,
    ProjectRecord,
    ServiceAccountRecord,
    UploadPartRecord,
    UploadRecord,
)

if TYPE_CHECKING:
    from tunewright.storage.metadata import SQLMetadataStore

A = "proj_a"
B = "proj_b"
ORG = "org-1"


def make_file(project_id: str = A, created_at: int = 1000, **kw: Any) -> FileRecord:
    file_id = kw.pop("id", None) or new_id("file")
    values: dict[str, Any] = {
        "bytes": 10,
        "filename": "train.jsonl",
        "purpose": "fine-tune",
        "blob_key": f"{project_id}/files/{file_id}",
        "sha256": "0" * 64,
        **kw,
    }
    return FileRecord(id=file_id, project_id=project_id, created_at=created_at, **values)


def make_job(project_id: str = A, created_at: int = 1000, **kw: Any) -> JobRecord:
    values: dict[str, Any] = {
        "organization_id": ORG,
        "model": "base",
        "base_model": "base",
        "status": "validating_files",
        "training_file": "file-x",
        "validation_file": None,
        "hyperparameters": {"n_epochs": 3, "batch_size": "auto"},
        "method": {"type": "supervised"},
        "seed": 7,
        "model_slot": "AbCd1234",
        **kw,
    }
    return JobRecord(id=values.pop("id", None) or new_id("job"), project_id=project_id, created_at=created_at, **values)


def make_event(job: JobRecord, created_at: int = 1000, **kw: Any) -> JobEventRecord:
    values: dict[str, Any] = {"level": "info", "message": "Created job", **kw}
    return JobEventRecord(id=new_id("event"), job_id=job.id, project_id=job.project_id, created_at=created_at, **values)


def make_model(project_id: str = A, created: int = 1000, **kw: Any) -> ModelRecord:
    values: dict[str, Any] = {
        "organization_id": ORG,
        "owned_by": "org-slug",
        "base_model": "base",
        "job_id": "ftjob-x",
        "adapter_key": "k",
        **kw,
    }
    model_id = values.pop("id", None) or f"ft:base:org:s:{new_id('part')[-8:]}"
    return ModelRecord(id=model_id, project_id=project_id, created=created, **values)


def make_permission(model: ModelRecord, project_id: str, created_at: int = 1000) -> PermissionRecord:
    return PermissionRecord(
        id=new_id("permission"),
        model=model.id,
        owner_project_id=model.project_id,
        project_id=project_id,
        created_at=created_at,
    )


def make_upload(project_id: str = A, created_at: int = 1000, **kw: Any) -> UploadRecord:
    values: dict[str, Any] = {
        "bytes": 20,
        "expires_at": created_at + 3600,
        "filename": "big.jsonl",
        "purpose": "fine-tune",
        "mime_type": "text/jsonl",
        **kw,
    }
    return UploadRecord(id=new_id("upload"), project_id=project_id, created_at=created_at, **values)


def make_part(upload: UploadRecord, created_at: int = 1000) -> UploadPartRecord:
    part_id = new_id("part")
    return UploadPartRecord(
        id=part_id,
        upload_id=upload.id,
        project_id=upload.project_id,
        created_at=created_at,
        bytes=10,
        blob_key=f"{upload.project_id}/parts/{part_id}",
        sha256="1" * 64,
    )


def make_key(project_id: str | None = A, created_at: int = 1000, **kw: Any) -> ApiKeyRecord:
    secret = new_id("key")
    values: dict[str, Any] = {
        "organization_id": ORG,
        "name": "k",
        "kind": "project" if project_id else "admin",
        "secret_hash": hashlib.sha256(secret.encode()).hexdigest(),
        "redacted_value": "sk-...abcd",
        **kw,
    }
    return ApiKeyRecord(id=new_id("key"), project_id=project_id, created_at=created_at, **values)


def add_job(store: SQLMetadataStore, project_id: str = A, created_at: int = 1000, **kw: Any) -> JobRecord:
    job = make_job(project_id, created_at, **kw)
    store.insert_job(job, make_event(job, created_at))
    return job


def by_creation(records: list[Any]) -> list[Any]:
    """Sort records as the store orders them: by `(created_at, id)`."""
    return sorted(records, key=lambda r: (r.created_at, r.id))


# --- files ------------------------------------------------------------------------------------------


def test_file_round_trips_and_is_invisible_to_other_projects(metadata_store: SQLMetadataStore) -> None:
    record = make_file(expires_at=5000, line_count=3, status_details=None)
    metadata_store.insert_file(record)
    assert metadata_store.get_file(record.id, project_id=A) == record
    with pytest.raises(NotFound):
        metadata_store.get_file(record.id, project_id=B)
    with pytest.raises(NotFound):
        metadata_store.delete_file(record.id, project_id=B)
    page = metadata_store.list_files(project_id=B, purpose=None, after=None, limit=10, order="desc")
    assert page.items == []
    assert not page.has_more


def test_list_files_pages_in_both_orders(metadata_store: SQLMetadataStore) -> None:
    # Pairs share a second, so the id breaks ties (ids made in one millisecond are not ordered among themselves).
    files = by_creation([make_file(created_at=1000 + i // 2) for i in range(5)])
    for record in files:
        metadata_store.insert_file(record)
    metadata_store.insert_file(make_file(B))
    newest = list(reversed(files))

    first = metadata_store.list_files(project_id=A, purpose=None, after=None, limit=2, order="desc")
    assert first.items == newest[:2]
    assert first.has_more
    second = metadata_store.list_files(project_id=A, purpose=None, after=first.items[-1].id, limit=2, order="desc")
    assert second.items == newest[2:4]
    assert second.has_more
    last = metadata_store.list_files(project_id=A, purpose=None, after=second.items[-1].id, limit=2, order="desc")
    assert last.items == newest[4:]
    assert not last.has_more
    empty = metadata_store.list_files(project_id=A, purpose=None, after=files[0].id, limit=2, order="desc")
    assert empty.items == []
    assert not empty.has_more

    asc = metadata_store.list_files(project_id=A, purpose=None, after=files[1].id, limit=10, order="asc")
    assert asc.items == files[2:]
    assert not asc.has_more


def test_list_files_filters_by_purpose(metadata_store: SQLMetadataStore) -> None:
    train = make_file(purpose="fine-tune")
    result = make_file(purpose="fine-tune-results", created_at=1001)
    metadata_store.insert_file(train)
    metadata_store.insert_file(result)
    page = metadata_store.list_files(project_id=A, purpose="fine-tune-results", after=None, limit=10, order="asc")
    assert page.items == [result]


@pytest.mark.parametrize("cursor", ["file-unknown", "foreign"])
def test_list_files_rejects_unknown_or_foreign_cursor(metadata_store: SQLMetadataStore, cursor: str) -> None:
    foreign = make_file(B)
    metadata_store.insert_file(foreign)
    after = foreign.id if cursor == "foreign" else cursor
    with pytest.raises(InvalidCursor):
        metadata_store.list_files(project_id=A, purpose=None, after=after, limit=10, order="desc")


def test_list_files_rejects_unknown_order(metadata_store: SQLMetadataStore) -> None:
    with pytest.raises(ValueError, match="order"):
        metadata_store.list_files(project_id=A, purpose=None, after=None, limit=10, order="sideways")


def test_delete_file_returns_the_row(metadata_store: SQLMetadataStore) -> None:
    record = make_file()
    metadata_store.insert_file(record)
    assert metadata_store.delete_file(record.id, project_id=A) == record
    with pytest.raises(NotFound):
        metadata_store.get_file(record.id, project_id=A)


def test_duplicate_file_id_is_a_conflict(metadata_store: SQLMetadataStore) -> None:
    record = make_file()
    metadata_store.insert_file(record)
    with pytest.raises(Conflict):
        metadata_store.insert_file(record)


def test_expired_files_lists_only_passed_expiry(metadata_store: SQLMetadataStore) -> None:
    gone = make_file(expires_at=100)
    kept = make_file(expires_at=10_000)
    forever = make_file(B)
    for record in (gone, kept, forever):
        metadata_store.insert_file(record)
    assert metadata_store.expired_files(now=500, limit=10) == [gone]


def test_active_jobs_using_file_ignores_terminal_and_foreign_jobs(metadata_store: SQLMetadataStore) -> None:
    running = add_job(metadata_store, training_file="file-t", status="running")
    paused = add_job(metadata_store, A, 1001, training_file="file-o", validation_file="file-t", status="paused")
    add_job(metadata_store, training_file="file-t", status="succeeded")
    add_job(metadata_store, B, training_file="file-t")
    assert metadata_store.active_jobs_using_file("file-t", project_id=A) == [running.id, paused.id]


# --- uploads ----------------------------------------------------------------------------------------


def test_upload_parts_and_completion_insert_the_file(metadata_store: SQLMetadataStore) -> None:
    upload = make_upload(bytes=30)
    metadata_store.insert_upload(upload)
    parts = [make_part(upload, 1000 + i) for i in range(3)]
    for part in parts:
        metadata_store.add_upload_part(part)
    assert metadata_store.list_upload_parts(upload.id, project_id=A) == parts
    file = make_file(bytes=30)

    done = metadata_store.finish_upload(upload.id, project_id=A, status="completed", file=file)

    assert done.status == "completed"
    assert done.file_id == file.id
    assert metadata_store.get_file(file.id, project_id=A) == file
    with pytest.raises(StateConflict) as err:
        metadata_store.finish_upload(upload.id, project_id=A, status="cancelled")
    assert err.value.current == "completed"
    with pytest.raises(StateConflict):
        metadata_store.add_upload_part(make_part(upload))
    assert metadata_store.delete_upload_parts(upload.id, project_id=A) == parts
    assert metadata_store.list_upload_parts(upload.id, project_id=A) == []


def test_parts_in_flight_claim_bytes_that_bound_the_upload_to_its_declared_size(
    metadata_store: SQLMetadataStore,
) -> None:
    upload = make_upload(bytes=100)
    metadata_store.insert_upload(upload)
    first, second, third = (make_part(upload, 1000 + i) for i in range(3))
    metadata_store.reserve_upload_bytes(upload.id, project_id=A, part_id=first.id, size=60)
    with pytest.raises(LimitExceeded):
        metadata_store.reserve_upload_bytes(upload.id, project_id=A, part_id=second.id, size=50)
    metadata_store.reserve_upload_bytes(upload.id, project_id=A, part_id=second.id, size=30)
    metadata_store.reserve_upload_bytes(upload.id, project_id=A, part_id=second.id, size=10)  # claims add up
    with pytest.raises(LimitExceeded):
        metadata_store.reserve_upload_bytes(upload.id, project_id=A, part_id=third.id, size=1)
    metadata_store.add_upload_part(first)  # 10 bytes in place of its claim of 60
    metadata_store.reserve_upload_bytes(upload.id, project_id=A, part_id=third.id, size=50)
    with pytest.raises(LimitExceeded):  # a part without a claim is held to the same bound
        metadata_store.add_upload_part(msgspec.structs.replace(make_part(upload), bytes=11))
    metadata_store.release_upload_bytes(third.id)
    metadata_store.reserve_upload_bytes(upload.id, project_id=A, part_id=third.id, size=10)
    metadata_store.finish_upload(upload.id, project_id=A, status="cancelled")
    with pytest.raises(StateConflict):
        metadata_store.reserve_upload_bytes(upload.id, project_id=A, part_id=third.id, size=1)


def test_concurrent_claims_never_exceed_the_declared_size(metadata_store: SQLMetadataStore) -> None:
    upload = make_upload(bytes=100)
    metadata_store.insert_upload(upload)
    start = threading.Barrier(8)
    granted: list[str] = []

    def claim() -> None:
        part_id = new_id("part")
        start.wait(timeout=30)
        try:
            metadata_store.reserve_upload_bytes(upload.id, project_id=A, part_id=part_id, size=30)
        except LimitExceeded:
            return
        granted.append(part_id)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(granted) == 3


def test_failed_completion_leaves_no_file(metadata_store: SQLMetadataStore) -> None:
    upload = make_upload()
    metadata_store.insert_upload(upload)
    existing = make_file()
    metadata_store.insert_file(existing)
    with pytest.raises(Conflict):
        metadata_store.finish_upload(upload.id, project_id=A, status="completed", file=existing)
    assert metadata_store.get_upload(upload.id, project_id=A).status == "pending"


def test_uploads_of_other_projects_are_not_found(metadata_store: SQLMetadataStore) -> None:
    upload = make_upload()
    metadata_store.insert_upload(upload)
    with pytest.raises(NotFound):
        metadata_store.get_upload(upload.id, project_id=B)
    with pytest.raises(NotFound):
        metadata_store.list_upload_parts(upload.id, project_id=B)
    with pytest.raises(NotFound):
        metadata_store.finish_upload(upload.id, project_id=B, status="cancelled")
    with pytest.raises(NotFound):
        metadata_store.add_upload_part(make_part(make_upload(B)))


def test_cancel_upload_and_expiry_sweep(metadata_store: SQLMetadataStore) -> None:
    old = make_upload(created_at=100)
    cancelled = make_upload(created_at=100)
    fresh = make_upload(created_at=5000)
    for upload in (old, cancelled, fresh):
        metadata_store.insert_upload(upload)
    metadata_store.finish_upload(cancelled.id, project_id=A, status="cancelled")
    assert metadata_store.expired_uploads(created_before=1000, limit=10) == [old]
    assert metadata_store.expire_upload(old.id, project_id=A)
    assert not metadata_store.expire_upload(cancelled.id, project_id=A)  # finished uploads keep their status
    assert metadata_store.get_upload(cancelled.id, project_id=A).status == "cancelled"
    assert metadata_store.get_upload(old.id, project_id=A).status == "expired"
    assert metadata_store.expired_uploads(created_before=1000, limit=10) == []


def test_finish_upload_rejects_other_statuses(metadata_store: SQLMetadataStore) -> None:
    upload = make_upload()
    metadata_store.insert_upload(upload)
    with pytest.raises(ValueError, match="completed or cancelled"):
        metadata_store.finish_upload(upload.id, project_id=A, status="expired")


# --- jobs -------------------------------------------------------------------------------------------


def test_job_round_trips_with_json_fields(metadata_store: SQLMetadataStore) -> None:
    job = add_job(
        metadata_store,
        metadata={"team": "nlp", "run": "1"},
        error=None,
        integrations=[{"type": "wandb", "wandb": {"project": "x"}}],
        result_files=["file-r"],
        lease_expires_at=None,
    )
    assert metadata_store.get_job(job.id, project_id=A) == job
    with pytest.raises(NotFound):
        metadata_store.get_job(job.id, project_id=B)
    assert metadata_store.list_jobs(project_id=B, after=None, limit=10, metadata=None).items == []


def test_list_jobs_newest_first_with_cursor(metadata_store: SQLMetadataStore) -> None:
    jobs = by_creation([add_job(metadata_store, created_at=1000) for _ in range(3)])
    foreign = add_job(metadata_store, B)
    first = metadata_store.list_jobs(project_id=A, after=None, limit=2, metadata=None)
    assert [j.id for j in first.items] == [jobs[2].id, jobs[1].id]
    assert first.has_more
    rest = metadata_store.list_jobs(project_id=A, after=jobs[1].id, limit=2, metadata=None)
    assert [j.id for j in rest.items] == [jobs[0].id]
    assert not rest.has_more
    with pytest.raises(InvalidCursor):
        metadata_store.list_jobs(project_id=A, after=foreign.id, limit=2, metadata=None)


def test_list_jobs_filters_on_metadata(metadata_store: SQLMetadataStore) -> None:
    plain = add_job(metadata_store, created_at=1000)
    nlp = add_job(metadata_store, created_at=1001, metadata={"team": "nlp", "run": "1"})
    vision = add_job(metadata_store, created_at=1002, metadata={"team": "vision"})
    empty = add_job(metadata_store, created_at=1003, metadata={})

    def ids(metadata: dict[str, str] | None) -> list[str]:
        return [j.id for j in metadata_store.list_jobs(project_id=A, after=None, limit=10, metadata=metadata).items]

    assert ids({"team": "nlp"}) == [nlp.id]
    assert ids({"team": "nlp", "run": "1"}) == [nlp.id]
    assert ids({"team": "nlp", "run": "2"}) == []
    assert ids({"weird key'\"$.": "x"}) == []
    assert ids({}) == [empty.id, plain.id]
    assert ids(None) == [empty.id, vision.id, nlp.id, plain.id]


def test_metadata_filter_pages_correctly(metadata_store: SQLMetadataStore) -> None:
    tagged = [add_job(metadata_store, created_at=1000 + i, metadata={"t": "y"}) for i in range(3)]
    for i in range(3):
        add_job(metadata_store, created_at=1000 + i, metadata={"t": "n"})
    page = metadata_store.list_jobs(project_id=A, after=None, limit=2, metadata={"t": "y"})
    assert [j.id for j in page.items] == [tagged[2].id, tagged[1].id]
    assert page.has_more
    page = metadata_store.list_jobs(project_id=A, after=tagged[1].id, limit=2, metadata={"t": "y"})
    assert [j.id for j in page.items] == [tagged[0].id]
    assert not page.has_more


def test_job_listing_encodes_as_the_record(metadata_store: SQLMetadataStore) -> None:
    """A list page's job (JSON columns as text) gives the wire the same JSON as the job's record."""
    from tunewright.api.fine_tuning.schemas import FineTuningJob

    jobs = [
        add_job(metadata_store, created_at=1000),
        add_job(
            metadata_store,
            created_at=1001,
            status="running",
            estimated_finish=5000,
            metadata={"team": "nlp", "run": "1"},
            integrations=[{"type": "wandb", "wandb": {"project": "x"}}],
            suffix="s",
        ),
        add_job(metadata_store, created_at=1002, status="queued", estimated_finish=5000, method={}),
        add_job(
            metadata_store,
            created_at=1003,
            status="failed",
            finished_at=1010,
            error={"message": "bad line", "param": "training_file"},
            result_files=["file-r1", "file-r2"],
            integrations=[],
            metadata={},
        ),
        add_job(
            metadata_store,
            created_at=1004,
            status="succeeded",
            fine_tuned_model="ft:base:org:s:AbCd1234",
            trained_tokens=123,
            validation_file="file-v",
            error={"code": "x", "message": "m", "param": None},
        ),
    ]
    listed = metadata_store.list_jobs(project_id=A, after=None, limit=10, metadata=None).items
    records = {job.id: metadata_store.get_job(job.id, project_id=A) for job in jobs}
    assert len(listed) == len(jobs)
    for listing in listed:
        from_listing = msgspec.json.decode(msgspec.json.encode(FineTuningJob.from_listing(listing)))
        from_record = msgspec.json.decode(msgspec.json.encode(FineTuningJob.from_record(records[listing.id])))
        assert from_listing == from_record


def test_insert_job_writes_its_first_event(metadata_store: SQLMetadataStore) -> None:
    job = make_job()
    event = make_event(job, message="Created fine-tuning job")
    metadata_store.insert_job(job, event)
    assert metadata_store.list_events(job.id, project_id=A, after=None, limit=10).items == [event]


def test_job_list_version_moves_with_every_change_to_the_projects_jobs(metadata_store: SQLMetadataStore) -> None:
    """The number the API's job-list page cache is checked against (api/fine_tuning/list_cache.py)."""
    assert metadata_store.job_list_versions([A, B, A]) == {A: 0, B: 0}  # no job yet; each project once
    assert metadata_store.job_list_versions([]) == {}
    seen = [0]

    def moved() -> bool:
        version = metadata_store.job_list_versions([A])[A]
        fresh = version > seen[-1]
        seen.append(version)
        return fresh

    job = add_job(metadata_store)
    assert moved()
    metadata_store.list_jobs(project_id=A, after=None, limit=10, metadata=None)
    assert not moved()  # reads change nothing
    add_job(metadata_store, B)
    assert not moved()  # another project's jobs are not this project's
    metadata_store.transition_job(job.id, project_id=A, allowed=["validating_files"], status="queued")
    assert moved()
    with metadata_store.database.transaction(immediate=True) as conn:
        conn.execute("UPDATE jobs SET trained_tokens = 5 WHERE id = :id", {"id": job.id})  # any writer at all
    assert moved()
    with metadata_store.database.transaction(immediate=True) as conn:
        conn.execute("DELETE FROM job_events WHERE job_id = :id", {"id": job.id})
        conn.execute("DELETE FROM jobs WHERE id = :id", {"id": job.id})
    assert moved()
    with pytest.raises(RuntimeError), metadata_store.database.transaction(immediate=True) as conn:
        conn.execute("UPDATE jobs SET trained_tokens = 6 WHERE project_id = :p", {"p": A})
        raise RuntimeError("rolled back")
    assert not moved()  # a change rolled back leaves the number as it was


def test_transition_job_compares_and_sets(metadata_store: SQLMetadataStore) -> None:
    job = add_job(metadata_store, status="running", lease_owner="w1", lease_expires_at=99.5)
    event = make_event(job, 1001, message="Job cancelled")

    moved = metadata_store.transition_job(
        job.id, project_id=A, allowed=["running", "queued"], status="cancelled", event=event, finished_at=1234
    )

    assert moved.status == "cancelled"
    assert moved.finished_at == 1234
    assert moved.lease_owner is None
    assert moved.lease_expires_at is None
    assert moved.updated_at > 0
    assert metadata_store.get_job(job.id, project_id=A) == moved
    assert metadata_store.list_events(job.id, project_id=A, after=None, limit=1).items == [event]
    with pytest.raises(StateConflict) as err:
        metadata_store.transition_job(job.id, project_id=A, allowed=["running"], status="paused")
    assert err.value.current == "cancelled"


def test_transition_to_running_keeps_the_lease(metadata_store: SQLMetadataStore) -> None:
    job = add_job(metadata_store, status="queued", lease_owner="w1", lease_expires_at=99.5)
    moved = metadata_store.transition_job(job.id, project_id=A, allowed=["queued"], status="running")
    assert (moved.lease_owner, moved.lease_expires_at) == ("w1", 99.5)


def test_transition_of_missing_or_foreign_job_is_not_found(metadata_store: SQLMetadataStore) -> None:
    job = add_job(metadata_store)
    with pytest.raises(NotFound):
        metadata_store.transition_job(job.id, project_id=B, allowed=["validating_files"], status="cancelled")
    with pytest.raises(NotFound):
        metadata_store.transition_job("ftjob-missing", project_id=A, allowed=["queued"], status="cancelled")
    with pytest.raises(StateConflict):
        metadata_store.transition_job(job.id, project_id=A, allowed=[], status="cancelled")


def test_transition_is_atomic_under_contention(metadata_store: SQLMetadataStore) -> None:
    job = add_job(metadata_store, status="queued")
    winners: list[str] = []
    errors: list[BaseException] = []

    def attempt(target: str) -> None:
        try:
            metadata_store.transition_job(job.id, project_id=A, allowed=["queued"], status=target)
            winners.append(target)
        except StateConflict:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(s,)) for s in ["cancelled", "running"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(winners) == 1
    assert metadata_store.get_job(job.id, project_id=A).status == winners[0]


def test_update_job_sets_fields_and_encodes_json(metadata_store: SQLMetadataStore) -> None:
    job = add_job(metadata_store)
    updated = metadata_store.update_job(
        job.id, project_id=A, hyperparameters={"n_epochs": 4}, estimated_finish=2000, error={"code": "x"}
    )
    assert updated.hyperparameters == {"n_epochs": 4}
    assert updated.error == {"code": "x"}
    assert metadata_store.get_job(job.id, project_id=A) == updated
    with pytest.raises(NotFound):
        metadata_store.update_job(job.id, project_id=B, estimated_finish=1)
    with pytest.raises(ValueError, match="organization_id"):
        metadata_store.update_job(job.id, project_id=A, organization_id="org-other")


def test_count_jobs_by_status_counts_every_project(metadata_store: SQLMetadataStore) -> None:
    add_job(metadata_store, status="queued")
    add_job(metadata_store, status="queued")
    add_job(metadata_store, B, status="running")
    assert metadata_store.count_jobs_by_status() == {"queued": 2, "running": 1}


# --- events and checkpoints -------------------------------------------------------------------------


def test_events_newest_first_and_ascending(metadata_store: SQLMetadataStore) -> None:
    job = make_job()
    events = by_creation([make_event(job, 1000 + i // 2, type="metrics", data={"loss": 0.5}) for i in range(5)])
    metadata_store.insert_job(job, events[0])
    for event in events[1:]:
        metadata_store.add_event(event)

    desc = metadata_store.list_events(job.id, project_id=A, after=None, limit=3)
    assert desc.items == events[:1:-1]
    assert desc.has_more
    older = metadata_store.list_events(job.id, project_id=A, after=events[2].id, limit=3)
    assert older.items == [events[1], events[0]]
    assert not older.has_more
    asc = metadata_store.list_events(job.id, project_id=A, after=events[1].id, limit=10, order="asc")
    assert asc.items == events[2:]
    with pytest.raises(NotFound):
        metadata_store.list_events(job.id, project_id=B, after=None, limit=3)
    other = add_job(metadata_store)
    with pytest.raises(InvalidCursor):
        metadata_store.list_events(other.id, project_id=A, after=events[0].id, limit=3)


def test_checkpoints_with_models(metadata_store: SQLMetadataStore) -> None:
    job = add_job(metadata_store)
    checkpoints = []
    for step in (10, 20, 30):
        model = make_model(id=f"ft:base:org:s:slot:ckpt-step-{step}", kind="checkpoint", job_id=job.id)
        checkpoint = CheckpointRecord(
            id=new_id("checkpoint"),
            job_id=job.id,
            project_id=A,
            created_at=1000 + step,
            step_number=step,
            fine_tuned_model_checkpoint=model.id,
            metrics={"train_loss": 1.5, "step": float(step)},
            blob_key=f"{A}/checkpoints/{step}",
        )
        metadata_store.add_checkpoint(checkpoint, model)
        checkpoints.append(checkpoint)

    page = metadata_store.list_checkpoints(job.id, project_id=A, after=None, limit=2)
    assert page.items == [checkpoints[2], checkpoints[1]]
    assert page.has_more
    page = metadata_store.list_checkpoints(job.id, project_id=A, after=checkpoints[1].id, limit=2)
    assert page.items == [checkpoints[0]]
    assert metadata_store.get_owned_model(checkpoints[0].fine_tuned_model_checkpoint, project_id=A).kind == (
        "checkpoint"
    )
    with pytest.raises(NotFound):
        metadata_store.list_checkpoints(job.id, project_id=B, after=None, limit=2)
    with pytest.raises(NotFound):
        metadata_store.delete_checkpoint(checkpoints[0].id, project_id=B)

    assert metadata_store.delete_checkpoint(checkpoints[0].id, project_id=A) == checkpoints[0]
    with pytest.raises(NotFound):
        metadata_store.get_model(checkpoints[0].fine_tuned_model_checkpoint, project_id=A)


# --- models and permissions -------------------------------------------------------------------------


def test_models_owned_and_shared(metadata_store: SQLMetadataStore) -> None:
    mine = make_model(A, 1000)
    my_checkpoint = make_model(A, 1001, kind="checkpoint")
    theirs = make_model(B, 999)
    their_checkpoint = make_model(B, 1002, kind="checkpoint")
    private = make_model(B, 1003)
    for model in (mine, my_checkpoint, theirs, their_checkpoint, private):
        metadata_store.insert_model(model)
    metadata_store.create_permissions([make_permission(theirs, A), make_permission(their_checkpoint, A)])

    assert metadata_store.list_models(project_id=A) == [theirs, mine, their_checkpoint]
    assert metadata_store.get_model(theirs.id, project_id=A) == theirs
    with pytest.raises(NotFound):
        metadata_store.get_model(private.id, project_id=A)
    with pytest.raises(NotFound):
        metadata_store.get_owned_model(theirs.id, project_id=A)
    with pytest.raises(NotFound):
        metadata_store.delete_model(theirs.id, project_id=A)


def test_delete_model_removes_its_permissions(metadata_store: SQLMetadataStore) -> None:
    model = make_model(B)
    metadata_store.insert_model(model)
    metadata_store.create_permissions([make_permission(model, A)])
    assert metadata_store.delete_model(model.id, project_id=B) == [model]
    assert metadata_store.list_models(project_id=A) == []
    metadata_store.insert_model(model)
    page = metadata_store.list_permissions(
        model.id, owner_project_id=B, project_id=None, after=None, limit=10, order="asc"
    )
    assert page.items == []


def test_permissions_create_list_get_delete(metadata_store: SQLMetadataStore) -> None:
    model = make_model(A)
    metadata_store.insert_model(model)
    grants = [make_permission(model, f"proj_{i}", 1000 + i) for i in range(3)]
    metadata_store.create_permissions(grants)
    metadata_store.create_permissions([make_permission(model, "proj_1", 2000)])  # duplicate pair: skipped

    def page(**kw: Any) -> Any:
        args: dict[str, Any] = {"owner_project_id": A, "project_id": None, "after": None, "limit": 10}
        return metadata_store.list_permissions(model.id, **{**args, "order": "asc", **kw})

    assert page().items == grants
    assert page(order="desc", limit=2).items == [grants[2], grants[1]]
    assert page(order="desc", limit=2).has_more
    assert page(after=grants[0].id).items == grants[1:]
    assert page(project_id="proj_2").items == [grants[2]]
    with pytest.raises(InvalidCursor):
        page(after="cp_unknown")
    with pytest.raises(NotFound):
        page(owner_project_id=B)
    assert metadata_store.get_permission(grants[1].id, model_id=model.id, owner_project_id=A) == grants[1]
    with pytest.raises(NotFound):
        metadata_store.get_permission(grants[1].id, model_id=model.id, owner_project_id=B)
    assert metadata_store.delete_permission(grants[1].id, model_id=model.id, owner_project_id=A) == grants[1]
    with pytest.raises(NotFound):
        metadata_store.delete_permission(grants[1].id, model_id=model.id, owner_project_id=A)
    assert page().items == [grants[0], grants[2]]


# --- tenants and keys -------------------------------------------------------------------------------


def test_organizations_and_projects(metadata_store: SQLMetadataStore) -> None:
    org = metadata_store.create_organization(name="Acme", slug="acme")
    other = metadata_store.create_organization(name="Other", slug="other")
    with pytest.raises(Conflict):
        metadata_store.create_organization(name="Again", slug="acme")
    assert metadata_store.get_organization(org.id) == org
    assert metadata_store.find_organization(slug="acme") == org
    assert metadata_store.find_organization(slug="nope") is None
    with pytest.raises(NotFound):
        metadata_store.get_organization("org-missing")

    first = metadata_store.create_project(organization_id=org.id, name="Default")
    second = metadata_store.create_project(organization_id=org.id, name="Default", external_key_id="ext")
    assert metadata_store.get_project(first.id, organization_id=org.id) == first
    assert metadata_store.get_project(first.id, organization_id=None) == first
    with pytest.raises(NotFound):
        metadata_store.get_project(first.id, organization_id=other.id)
    assert metadata_store.find_project(organization_id=org.id, name="Default") == by_creation([first, second])[0]
    assert metadata_store.find_project(organization_id=other.id, name="Default") is None

    archived = metadata_store.update_project(second.id, organization_id=org.id, status="archived", archived_at=5)
    assert (archived.status, archived.archived_at, archived.external_key_id) == ("archived", 5, "ext")
    with pytest.raises(NotFound):
        metadata_store.update_project(second.id, organization_id=other.id, name="x")
    with pytest.raises(ValueError, match="cannot update id"):
        metadata_store.update_project(second.id, organization_id=org.id, id="proj_other")

    def listed(**kw: Any) -> list[str]:
        args: dict[str, Any] = {"organization_id": org.id, "after": None, "limit": 10, "include_archived": True}
        return [p.id for p in metadata_store.list_projects(**{**args, **kw}).items]

    assert listed() == [p.id for p in by_creation([first, archived])]
    assert listed(include_archived=False) == [first.id]
    assert listed(after=listed()[0]) == listed()[1:]
    with pytest.raises(InvalidCursor):
        listed(organization_id=other.id, after=first.id)


def test_database_created_at_is_the_first_migration_for_every_store_on_it(database: Any) -> None:
    from tunewright.storage.metadata import SQLMetadataStore

    with database.reading() as conn:
        first = min(row["applied_at"] for row in conn.execute("SELECT applied_at FROM schema_migrations").fetchall())
    created = {SQLMetadataStore(database).database_created_at() for _ in range(2)}
    assert created == {first}


def race(count: int, call: Any) -> list[Any]:
    """Run `call()` on `count` threads released together; return what each returned."""
    start = threading.Barrier(count)
    results: list[Any] = []

    def run() -> None:
        start.wait(timeout=30)
        results.append(call())

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == count
    return results


def test_ensure_project_makes_one_project_however_many_ask_at_once(metadata_store: SQLMetadataStore) -> None:
    org = metadata_store.create_organization(name="Acme", slug="acme")
    made = race(6, lambda: metadata_store.ensure_project(organization_id=org.id, name="shared"))
    assert len({project.id for project in made}) == 1
    page = metadata_store.list_projects(organization_id=org.id, after=None, limit=10, include_archived=True)
    assert [project.id for project in page.items] == [made[0].id]
    assert metadata_store.ensure_project(organization_id=org.id, name="shared") == made[0]


def test_create_first_tenant_inserts_once_and_never_beside_a_tenant(metadata_store: SQLMetadataStore) -> None:
    def attempt(slug: str = "default") -> bool:
        org = OrganizationRecord(id=new_id("org"), name=slug, slug=slug, created_at=1000)
        project = ProjectRecord(id=new_id("project"), organization_id=org.id, name="default", created_at=1000)
        key = make_key(project.id, 1000, organization_id=org.id)
        return metadata_store.create_first_tenant(org, project, key)

    assert sorted(race(6, attempt)) == [False] * 5 + [True]
    (key,) = metadata_store.list_all_api_keys()
    org = metadata_store.find_organization(slug="default")
    assert org is not None and key.organization_id == org.id
    page = metadata_store.list_projects(organization_id=None, after=None, limit=10, include_archived=True)
    assert [project.id for project in page.items] == [key.project_id]
    assert attempt("other") is False  # a key exists: not a first start
    metadata_store.revoke_api_key(key.id, organization_id=org.id, project_id=key.project_id)
    assert attempt() is False  # the `default` organization exists


def test_api_keys_find_list_revoke(metadata_store: SQLMetadataStore) -> None:
    keys = [make_key(A, 1000 + i) for i in range(3)]
    admin = make_key(None, 1001)
    foreign = make_key(B, 1001)
    for key in (*keys, admin, foreign):
        metadata_store.create_api_key(key)
    with pytest.raises(Conflict):
        metadata_store.create_api_key(make_key(A, secret_hash=keys[0].secret_hash))

    assert metadata_store.find_api_key(keys[0].secret_hash) == keys[0]
    assert metadata_store.find_api_key("0" * 64) is None
    metadata_store.touch_api_key(keys[0].id, 4242)
    assert metadata_store.get_api_key(keys[0].id, organization_id=ORG, project_id=A).last_used_at == 4242
    with pytest.raises(NotFound):
        metadata_store.get_api_key(keys[0].id, organization_id=ORG, project_id=B)
    with pytest.raises(NotFound):
        metadata_store.get_api_key(keys[0].id, organization_id=ORG, project_id=None)

    page = metadata_store.list_api_keys(organization_id=ORG, project_id=A, after=None, limit=2)
    assert [k.id for k in page.items] == [keys[0].id, keys[1].id]
    assert page.has_more
    admins = metadata_store.list_api_keys(organization_id=ORG, project_id=None, after=None, limit=10)
    assert admins.items == [admin]
    with pytest.raises(InvalidCursor):
        metadata_store.list_api_keys(organization_id=ORG, project_id=A, after=foreign.id, limit=2)

    revoked = metadata_store.revoke_api_key(keys[1].id, organization_id=ORG, project_id=A)
    assert revoked.revoked_at is not None
    found = metadata_store.find_api_key(keys[1].secret_hash)
    assert found is not None
    assert found.revoked_at == revoked.revoked_at
    with pytest.raises(NotFound):
        metadata_store.revoke_api_key(keys[1].id, organization_id=ORG, project_id=A)
    with pytest.raises(NotFound):
        metadata_store.revoke_api_key(foreign.id, organization_id=ORG, project_id=A)
    listed = metadata_store.list_api_keys(organization_id=ORG, project_id=A, after=keys[0].id, limit=10)
    assert [k.id for k in listed.items] == [keys[2].id]
    expected = [keys[0], *by_creation([admin, foreign]), keys[2]]
    assert [k.id for k in metadata_store.list_all_api_keys()] == [k.id for k in expected]


def test_service_account_delete_revokes_its_keys(metadata_store: SQLMetadataStore) -> None:
    account = ServiceAccountRecord(id=new_id("service_account"), project_id=A, name="ci", role="member", created_at=1)
    key = make_key(A, kind="service_account", service_account_id=account.id)
    other_key = make_key(A)
    metadata_store.create_service_account(account, key)
    metadata_store.create_api_key(other_key)

    assert metadata_store.get_service_account(account.id, project_id=A) == account
    with pytest.raises(NotFound):
        metadata_store.get_service_account(account.id, project_id=B)
    assert metadata_store.list_service_accounts(project_id=A, after=None, limit=10).items == [account]
    assert metadata_store.list_service_accounts(project_id=B, after=None, limit=10).items == []
    with pytest.raises(InvalidCursor):
        metadata_store.list_service_accounts(project_id=B, after=account.id, limit=10)
    with pytest.raises(NotFound):
        metadata_store.delete_service_account(account.id, project_id=B)

    metadata_store.delete_service_account(account.id, project_id=A)

    with pytest.raises(NotFound):
        metadata_store.get_service_account(account.id, project_id=A)
    found = metadata_store.find_api_key(key.secret_hash)
    assert found is not None
    assert found.revoked_at is not None
    assert metadata_store.list_api_keys(organization_id=ORG, project_id=A, after=None, limit=10).items == [other_key]


def test_service_account_with_duplicate_key_is_not_created(metadata_store: SQLMetadataStore) -> None:
    existing = make_key(A)
    metadata_store.create_api_key(existing)
    account = ServiceAccountRecord(id=new_id("service_account"), project_id=A, name="ci", role="member", created_at=1)
    with pytest.raises(Conflict):
        metadata_store.create_service_account(account, make_key(A, secret_hash=existing.secret_hash))
    with pytest.raises(NotFound):
        metadata_store.get_service_account(account.id, project_id=A)


def test_ping_answers(metadata_store: SQLMetadataStore) -> None:
    metadata_store.ping()


def test_blob_intents_are_cleared_by_the_row_that_publishes_the_blob(metadata_store: SQLMetadataStore) -> None:
    published, part_file, orphan = make_file(), make_file(), "p/files/orphan"
    upload = make_upload()
    part = make_part(upload)
    metadata_store.insert_upload(upload)
    for key in (published.blob_key, part.blob_key, part_file.blob_key, orphan):
        metadata_store.begin_blob(key, now=100)
    metadata_store.insert_file(published)
    metadata_store.add_upload_part(part)
    metadata_store.finish_upload(upload.id, project_id=A, status="completed", file=part_file)
    assert metadata_store.stale_blobs(created_before=101, limit=10) == [orphan]
    assert metadata_store.stale_blobs(created_before=100, limit=10) == []
    metadata_store.end_blob(orphan)
    assert metadata_store.stale_blobs(created_before=101, limit=10) == []


def test_an_organizations_model_is_found_by_its_organization_only(metadata_store: SQLMetadataStore) -> None:
    model = make_model()
    metadata_store.insert_model(model)
    assert metadata_store.get_organization_model(model.id, organization_id=model.organization_id) == model
    with pytest.raises(NotFound):
        metadata_store.get_organization_model(model.id, organization_id="org-other")


def test_rate_limits_change_only_what_is_set_and_stay_in_their_project(metadata_store: SQLMetadataStore) -> None:
    assert metadata_store.list_rate_limits(project_id=A) == []
    first = metadata_store.set_rate_limit(project_id=A, model="tiny", max_requests_per_1_minute=5)
    assert (first.max_requests_per_1_minute, first.max_tokens_per_1_minute, first.max_requests_per_1_day) == (
        5,
        None,
        None,
    )
    second = metadata_store.set_rate_limit(project_id=A, model="tiny", max_tokens_per_1_minute=900)
    assert (second.max_requests_per_1_minute, second.max_tokens_per_1_minute) == (5, 900)
    metadata_store.set_rate_limit(project_id=A, model="base", max_requests_per_1_day=7)
    assert [r.model for r in metadata_store.list_rate_limits(project_id=A)] == ["base", "tiny"]
    assert metadata_store.list_rate_limits(project_id=B) == []

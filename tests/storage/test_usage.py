"""Usage rows of the MetadataStore, over SQLite and PostgreSQL: per request, per day of stored bytes, and sums."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tunewright.storage.ids import new_id
from tunewright.storage.records import (
    FileRecord,
    TrainingUsageRecord,
    UploadPartRecord,
    UploadRecord,
    UsageRecord,
    UsageWindow,
)
from tunewright.storage.rows import to_params

if TYPE_CHECKING:
    from tunewright.storage.metadata import SQLMetadataStore

A = "proj_a"
B = "proj_b"


def make_usage(project_id: str = A, created_at: int = 1000, **kw: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "api_key_id": "key_1",
        "model": "ft:tiny:acme:sfx:Ab3dEf7h",
        "base_model": "tiny",
        "endpoint": "chat.completions",
        "streamed": False,
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "latency_ms": 40,
        **kw,
    }
    return UsageRecord(id=new_id("usage"), project_id=project_id, created_at=created_at, **values)


def test_usage_rows_round_trip_with_their_types(metadata_store: SQLMetadataStore) -> None:
    streamed = make_usage(streamed=True, endpoint="completions", completion_tokens=0)
    plain = make_usage(created_at=1001)
    metadata_store.insert_usage(streamed)
    metadata_store.insert_usage(plain)
    assert metadata_store.list_usage(project_id=A) == [streamed, plain]
    assert metadata_store.list_usage(project_id=A)[0].streamed is True


def test_usage_is_listed_per_project_oldest_first_from_a_time(metadata_store: SQLMetadataStore) -> None:
    rows = [make_usage(created_at=t) for t in (1003, 1001, 1002)]
    for row in rows:
        metadata_store.insert_usage(row)
    metadata_store.insert_usage(make_usage(project_id=B))
    assert [r.created_at for r in metadata_store.list_usage(project_id=A)] == [1001, 1002, 1003]
    assert [r.created_at for r in metadata_store.list_usage(project_id=A, created_after=1002)] == [1002, 1003]
    assert len(metadata_store.list_usage(project_id=A, limit=2)) == 2
    assert [r.project_id for r in metadata_store.list_usage(project_id=B)] == [B]


def test_each_request_is_its_own_row(metadata_store: SQLMetadataStore) -> None:
    for _ in range(3):
        metadata_store.insert_usage(make_usage())
    assert len(metadata_store.list_usage(project_id=A)) == 3


# --- stored bytes -----------------------------------------------------------------------------------

DAY = 86_400
NOON = 20_000 * DAY + 12 * 3600


def make_file(store: SQLMetadataStore, project_id: str, size: int) -> FileRecord:
    record = FileRecord(
        id=new_id("file"),
        project_id=project_id,
        bytes=size,
        created_at=1,
        filename="f.jsonl",
        purpose="fine-tune",
        blob_key=f"{project_id}/files/x",
        sha256="0" * 64,
    )
    store.insert_file(record)
    return record


def stored(store: SQLMetadataStore, project_id: str) -> list[tuple[int, int]]:
    return [(row.day, row.bytes) for row in store.list_storage_usage(project_id=project_id)]


def test_the_storage_snapshot_is_idempotent_and_keeps_the_days_most(metadata_store: SQLMetadataStore) -> None:
    big = make_file(metadata_store, A, 700)
    make_file(metadata_store, A, 300)
    make_file(metadata_store, B, 5)
    upload = UploadRecord(
        id=new_id("upload"),
        project_id=B,
        bytes=100,
        created_at=1,
        expires_at=2,
        filename="u",
        purpose="fine-tune",
        mime_type="text/jsonl",
    )
    metadata_store.insert_upload(upload)
    metadata_store.reserve_upload_bytes(upload.id, project_id=B, part_id="part_1", size=40)
    part = UploadPartRecord(
        id="part_1", upload_id=upload.id, project_id=B, created_at=1, bytes=40, blob_key="b/parts/1", sha256="0" * 64
    )
    metadata_store.add_upload_part(part)
    assert metadata_store.snapshot_storage(now=NOON) == 2
    assert metadata_store.snapshot_storage(now=NOON + 60) == 2  # another sweep, or another replica
    today = NOON - 12 * 3600
    assert stored(metadata_store, A) == [(today, 1000)]
    assert stored(metadata_store, B) == [(today, 45)]
    metadata_store.delete_file(big.id, project_id=A)
    metadata_store.snapshot_storage(now=NOON + 3600)
    assert stored(metadata_store, A) == [(today, 1000)]  # the day keeps what it held at its most
    metadata_store.snapshot_storage(now=NOON + DAY)
    assert stored(metadata_store, A) == [(today, 1000), (today + DAY, 300)]


# --- totals ------------------------------------------------------------------------------------------


@pytest.fixture
def orgs(metadata_store: SQLMetadataStore) -> dict[str, str]:
    """Projects `x1`, `x2` of one organization and `y1` of another, by name; `x` and `y` are the organizations."""
    x = metadata_store.create_organization(name="X", slug="x").id
    y = metadata_store.create_organization(name="Y", slug="y").id
    return {
        "x": x,
        "y": y,
        "x1": metadata_store.create_project(organization_id=x, name="x1").id,
        "x2": metadata_store.create_project(organization_id=x, name="x2").id,
        "y1": metadata_store.create_project(organization_id=y, name="y1").id,
    }


def window(organization_id: str | None, **kw: Any) -> UsageWindow:
    values: dict[str, Any] = {"origin": 1000, "width": 60, "start": 1000, "end": 1180, **kw}
    return UsageWindow(organization_id=organization_id, **values)


def test_usage_totals_sum_per_bucket_and_group_within_one_organization(
    metadata_store: SQLMetadataStore, orgs: dict[str, str]
) -> None:
    rows = [
        make_usage(orgs["x1"], 999, prompt_tokens=1000),  # before the window
        make_usage(orgs["x1"], 1000, prompt_tokens=1, completion_tokens=2),
        make_usage(orgs["x1"], 1059, prompt_tokens=10, completion_tokens=20, model="tiny"),
        make_usage(orgs["x2"], 1060, prompt_tokens=100, completion_tokens=200, api_key_id="key_2"),
        make_usage(orgs["x1"], 1179, prompt_tokens=3, completion_tokens=4),
        make_usage(orgs["x1"], 1180, prompt_tokens=1000),  # the end is exclusive
        make_usage(orgs["y1"], 1000, prompt_tokens=1000),  # another organization
    ]
    for row in rows:
        metadata_store.insert_usage(row)
    ungrouped = metadata_store.usage_totals(window(orgs["x"]), group_by=())
    assert [(t.bucket, t.input_tokens, t.output_tokens, t.requests) for t in ungrouped] == [
        (0, 11, 22, 2),
        (1, 100, 200, 1),
        (2, 3, 4, 1),
    ]
    by_model = metadata_store.usage_totals(window(orgs["x"]), group_by=("project_id", "model"))
    assert [(t.bucket, t.project_id, t.model, t.input_tokens) for t in by_model] == [
        (0, orgs["x1"], "ft:tiny:acme:sfx:Ab3dEf7h", 1),
        (0, orgs["x1"], "tiny", 10),
        (1, orgs["x2"], "ft:tiny:acme:sfx:Ab3dEf7h", 100),
        (2, orgs["x1"], "ft:tiny:acme:sfx:Ab3dEf7h", 3),
    ]
    assert by_model[0].api_key_id is None
    everyone = metadata_store.usage_totals(window(None), group_by=())
    assert everyone[0].input_tokens == 1011
    keyed = metadata_store.usage_totals(window(orgs["x"], api_key_ids=("key_2",)), group_by=("api_key_id",))
    assert [(t.bucket, t.api_key_id, t.input_tokens) for t in keyed] == [(1, "key_2", 100)]
    only = window(orgs["x"], project_ids=(orgs["x1"], orgs["y1"]), models=("tiny",))
    assert [t.input_tokens for t in metadata_store.usage_totals(only, group_by=())] == [10]


def test_training_and_storage_totals_count_jobs_and_byte_days(
    metadata_store: SQLMetadataStore, orgs: dict[str, str]
) -> None:
    for job, step, at in (("ftjob-1", 1, 1000), ("ftjob-1", 2, 1001), ("ftjob-2", 1, 1002), ("ftjob-3", 1, 1100)):
        project = orgs["y1"] if job == "ftjob-3" else orgs["x1"]
        usage = TrainingUsageRecord(
            job_id=job, step=step, project_id=project, model="tiny", base_model="tiny", trained_tokens=10, created_at=at
        )
        with metadata_store.database.transaction() as conn:
            conn.run("insert_training_usage", to_params(usage))
    totals = metadata_store.training_totals(window(None), group_by=("project_id",))
    assert [(t.bucket, t.project_id, t.trained_tokens, t.jobs) for t in totals] == [
        (0, orgs["x1"], 30, 2),
        (1, orgs["y1"], 10, 1),
    ]
    assert metadata_store.training_totals(window(orgs["x"], api_key_ids=("key_1",)), group_by=()) == []
    make_file(metadata_store, orgs["x1"], 2048)
    metadata_store.snapshot_storage(now=1050)
    days = UsageWindow(organization_id=orgs["x"], origin=0, width=DAY, start=0, end=DAY)
    assert [(t.project_id, t.byte_days) for t in metadata_store.storage_totals(days, group_by=("project_id",))] == [
        (orgs["x1"], 2048)
    ]
    with pytest.raises(ValueError, match="api_key_id"):
        metadata_store.storage_totals(days, group_by=("api_key_id",))

"""Usage rows of the MetadataStore, over SQLite and PostgreSQL: one row per request, scoped by project."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.storage.ids import new_id
from tunewright.storage.records import UsageRecord

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

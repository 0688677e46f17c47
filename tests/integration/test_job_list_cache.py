"""The job-list page cache (api/fine_tuning/list_cache.py): never a stale page, whoever changed the jobs.

Two app instances over one database stand for two API processes; a direct store write stands for a worker.
Run over SQLite and over PostgreSQL + S3.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest
from litestar.testing import TestClient

from tunewright.api.app import create_app
from tunewright.api.fine_tuning.list_cache import JobPageCache, VersionReads, page_key
from tunewright.storage.registry import open_stores

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASE = "smollm2-135m-instruct"


def auth(tenant: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.key}"}


@pytest.fixture
def second_process(settings, stores):
    """Another API process on the same database and blob store, with its own page cache."""
    other_stores = open_stores(settings)
    with TestClient(create_app(settings, other_stores, sweep=False), base_url="http://testserver.local") as client:
        yield client
    other_stores.close()


def listed(client: TestClient[Any], tenant: Any, **params: Any) -> list[tuple[str, str]]:
    response = client.get("/v1/fine_tuning/jobs", params=params, headers=auth(tenant))
    assert response.status_code == 200, response.text
    return [(job["id"], job["status"]) for job in response.json()["data"]]


def upload(client: TestClient[Any], tenant: Any) -> str:
    files = {"file": ("train.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes())}
    response = client.post("/v1/files", headers=auth(tenant), files=files, data={"purpose": "fine-tune"})
    return response.json()["id"]


def test_a_page_never_outlives_a_change_made_elsewhere(http, second_process, stores, tenants):
    tenant = tenants["a"]
    training_file = upload(http, tenant)
    body = {"model": BASE, "training_file": training_file}
    first = http.post("/v1/fine_tuning/jobs", headers=auth(tenant), json=body).json()["id"]
    assert listed(http, tenant) == [(first, "validating_files")]
    assert listed(http, tenant) == [(first, "validating_files")]  # the second from the page kept

    # Created through the other process: this one's kept page is stale and must not be served.
    second = second_process.post("/v1/fine_tuning/jobs", headers=auth(tenant), json=body).json()["id"]
    assert listed(http, tenant) == [(second, "validating_files"), (first, "validating_files")]

    # Cancelled through the other process.
    assert second_process.post(f"/v1/fine_tuning/jobs/{first}/cancel", headers=auth(tenant)).status_code == 200
    assert listed(http, tenant) == [(second, "validating_files"), (first, "cancelled")]

    # Changed by a worker, through the store and not the API at all.
    stores.metadata.transition_job(second, project_id=tenant.project_id, allowed=["validating_files"], status="queued")
    assert listed(http, tenant) == [(second, "queued"), (first, "cancelled")]
    assert listed(second_process, tenant) == [(second, "queued"), (first, "cancelled")]

    # Pages with other parameters are kept apart; another project's page stays its own.
    assert listed(http, tenant, limit=1) == [(second, "queued")]
    assert listed(http, tenant, after=second) == [(first, "cancelled")]
    assert listed(http, tenants["b"]) == []


def test_kept_pages_are_byte_for_byte_what_rendering_gives(http, settings, stores, tenants):
    tenant = tenants["a"]
    training_file = upload(http, tenant)
    for team in ("x", "y", "x"):
        body = {"model": BASE, "training_file": training_file, "metadata": {"team": team}, "suffix": team}
        assert http.post("/v1/fine_tuning/jobs", headers=auth(tenant), json=body).status_code == 200
    settings_off = msgspec.structs.replace(settings, job_list_cache_bytes=0)
    with TestClient(create_app(settings_off, stores, sweep=False), base_url="http://testserver.local") as uncached:
        for params in ({}, {"limit": 2}, {"metadata[team]": "x"}):
            kept = [http.get("/v1/fine_tuning/jobs", params=params, headers=auth(tenant)) for _ in range(2)]
            rendered = uncached.get("/v1/fine_tuning/jobs", params=params, headers=auth(tenant))
            assert kept[0].content == kept[1].content == rendered.content
            assert kept[0].headers["content-type"] == rendered.headers["content-type"] == "application/json"


def test_cache_keeps_pages_under_their_version_within_its_byte_budget():
    cache = JobPageCache(max_bytes=10)
    key_a, key_b = page_key("p", None, 20, None), page_key("p", None, 20, {"b": "1", "a": "2"})
    assert key_b == page_key("p", None, 20, {"a": "2", "b": "1"})  # the filter's order does not matter
    assert key_a != page_key("p", None, 20, {})  # no filter is not the empty filter
    cache.put(key_a, 1, b"aaaa")
    assert cache.get(key_a, 1) == b"aaaa"
    assert cache.get(key_a, 2) is None  # rendered under another version
    cache.put(key_b, 1, b"bbbb")
    cache.get(key_a, 1)  # a is now the most recently used
    cache.put(page_key("q", None, 20, None), 1, b"cccc")  # over 10 bytes: b goes first
    assert cache.get(key_b, 1) is None
    assert cache.get(key_a, 1) == b"aaaa"
    assert cache.size_bytes == 8
    cache.put(key_a, 2, b"a")  # replaced, not added
    assert cache.size_bytes == 5
    cache.put(key_a, 3, b"x" * 11)  # larger than the whole budget: not kept, and the old page still answers v2
    assert cache.get(key_a, 2) == b"a"
    assert JobPageCache(max_bytes=0).get(key_a, 0) is None


class _SlowVersions:
    """A metadata store whose version reads wait for the test's go-ahead, counting the reads made."""

    reads_wait_on_network = True

    def __init__(self) -> None:
        self.version = 1
        self.reads: list[list[str]] = []
        self.gate = threading.Event()
        self.fail: Exception | None = None

    def job_list_versions(self, project_ids: list[str]) -> dict[str, int]:
        self.reads.append(list(project_ids))
        seen = self.version  # the read's snapshot: taken when it starts
        assert self.gate.wait(5)
        if self.fail is not None:
            raise self.fail
        return dict.fromkeys(project_ids, seen)


def test_version_reads_coalesce_but_never_answer_from_a_read_begun_earlier():
    async def scenario() -> None:
        metadata = _SlowVersions()
        reads = VersionReads(cast("Any", SimpleNamespace(metadata=metadata)))
        first = asyncio.ensure_future(reads.read("p"))
        await asyncio.sleep(0.05)  # the first read is under way, holding its snapshot
        metadata.version = 2  # a change commits after that read began...
        later = [asyncio.ensure_future(reads.read(p)) for p in ("p", "p", "q")]  # ...and before these arrive
        cancelled = asyncio.ensure_future(reads.read("p"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        metadata.gate.set()
        assert await first == 1
        assert [await f for f in later] == [2, 2, 2]  # the next read, not the one under way when they came
        assert metadata.reads == [["p"], ["p", "q"]]  # four requests after the first: one read, each project once

        metadata.gate.clear()
        metadata.fail = RuntimeError("database down")
        failing = [asyncio.ensure_future(reads.read("p")) for _ in range(2)]
        await asyncio.sleep(0.05)
        metadata.gate.set()
        for future in failing:
            with pytest.raises(RuntimeError, match="database down"):
                await future
        metadata.fail = None
        assert await reads.read("p") == 2  # a failed read leaves nothing behind

    asyncio.run(scenario())

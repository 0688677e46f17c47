"""A revoked key is refused by every API process within `KEY_CACHE_TTL_S`, though each caches usable keys.

Two `tunewright serve` processes share one database, as replicas (or granian workers) do. Both have
authenticated the key (so both hold it in their cache); it is revoked through the admin API of the first.
The first refuses it at once (its own change clears its cache); the second after waiting the bound.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fixtures.app import OPERATOR_KEY, make_tenant
from fixtures.server import server_env, start_serve, stop_server

from tunewright.storage.metadata_tenants import KEY_CACHE_TTL_S
from tunewright.storage.registry import open_stores
from tunewright.storage.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One database for both processes: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'shared.db'}"


@pytest.fixture
def replicas(tmp_path: Path, database_url: str) -> Iterator[list[str]]:
    """Two `tunewright serve` processes on `database_url` (own data dirs, no trainers); their URLs."""
    processes: list[Any] = []
    urls = []
    try:
        for name in ("first", "second"):
            env = server_env(tmp_path / name, {"TUNEWRIGHT_DATABASE_URL": database_url})
            env["TUNEWRIGHT_ADMIN_KEY"] = OPERATOR_KEY
            (tmp_path / name).mkdir()
            url, process = start_serve(env, tmp_path / name / "serve.log")
            processes.append(process)
            urls.append(url)
        yield urls
    finally:
        for process in processes:
            stop_server(process)


def test_a_key_revoked_in_one_process_is_refused_by_every_process_within_the_bound(
    replicas: list[str], tmp_path: Path, database_url: str
) -> None:
    stores = open_stores(load_settings({}, data_dir=str(tmp_path / "seed"), database_url=database_url))
    try:
        tenant = make_tenant(stores, "acme")  # `serve` has migrated the database by now
    finally:
        stores.close()
    first, second = replicas
    key = {"Authorization": f"Bearer {tenant.key}"}
    for url in (first, second):
        assert httpx.get(f"{url}/v1/files", headers=key).status_code == 200  # now in both caches

    revoked = httpx.delete(
        f"{first}/v1/organization/projects/{tenant.project_id}/api_keys/{tenant.key_id}",
        headers={"Authorization": f"Bearer {OPERATOR_KEY}", "OpenAI-Organization": tenant.organization_id},
    )
    assert revoked.status_code == 200, revoked.text
    assert httpx.get(f"{first}/v1/files", headers=key).status_code == 401

    time.sleep(KEY_CACHE_TTL_S + 0.1)
    refused = httpx.get(f"{second}/v1/files", headers=key)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"

"""`last_used_at`: written on a key's first use, then at most once a minute per process, cached lookups or not."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from fixtures.app import make_key

if TYPE_CHECKING:
    from litestar.testing import TestClient

    from tunewright.storage.base import Stores


@pytest.fixture
def backend() -> str:
    """Backend-independent: the throttle lives in the API process."""
    return "embedded"


def test_a_burst_of_requests_writes_last_used_at_once(
    http: TestClient[Any], stores: Stores, tenants: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = make_key(stores, organization_id=tenants["a"].organization_id, project_id=tenants["a"].project_id)
    writes: list[tuple[str, int]] = []
    touch = stores.metadata.touch_api_key

    def counting_touch(key_id: str, at: int) -> None:
        writes.append((key_id, at))
        touch(key_id, at)

    monkeypatch.setattr(stores.metadata, "touch_api_key", counting_touch)
    for _ in range(5):
        assert http.get("/v1/files", headers={"Authorization": f"Bearer {key.secret_hash}"}).status_code == 200
    assert [key_id for key_id, _ in writes] == [key.id]
    stored = stores.metadata.get_api_key(key.id, organization_id=key.organization_id, project_id=key.project_id)
    assert stored.last_used_at == writes[0][1]

"""/v1/webhook_endpoints through the real openai SDK: create, list, retrieve, update, delete, rotate, test.

OpenAI's published document has no schemas for these operations yet: bodies are checked against the SDK's own
types (tests/fixtures/contract.py `validate_sdk_type`), errors against `ErrorResponse`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec
import openai
import pytest
from fixtures.app import OPERATOR_KEY, Tenant, backend_settings, make_key
from fixtures.contract import validate_error, validate_sdk_type, validate_webhook_event
from fixtures.webhooks import FAST_WEBHOOKS, Receiver
from litestar.testing import TestClient
from openai.types.webhooks import (
    DeletedWebhookEndpoint,
    WebhookEndpoint,
    WebhookEndpointList,
    WebhookEndpointTestResult,
    WebhookEndpointWithSecret,
    WebhookEventTypeList,
)

from tunewright.api.app import create_app

if TYPE_CHECKING:
    from collections.abc import Callable

    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

pytestmark = pytest.mark.integration

FT_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


@pytest.fixture
def settings(tmp_path: Any, request: pytest.FixtureRequest, backend: str) -> Settings:
    return backend_settings(request, tmp_path, backend, **FAST_WEBHOOKS)


def raw(http: TestClient[Any], key: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = http.request(method, f"/v1{path}", headers={"Authorization": f"Bearer {key}"}, **kwargs)
    return response.status_code, response.json()


def test_create_answers_the_secret_and_nothing_else_does(
    client_a: openai.OpenAI, http: TestClient[Any], tenants: dict[str, Tenant]
) -> None:
    key = tenants["a"].key
    status, created = raw(
        http,
        key,
        "POST",
        "/webhook_endpoints",
        json={"name": "ops", "url": "https://hooks.example.com/ft", "event_types": FT_EVENTS},
    )
    assert status == 200
    validate_sdk_type(created, WebhookEndpointWithSecret)
    assert created["id"].startswith("whe_")
    assert created["signing_secret"].startswith("whsec_")
    assert created["signing_secret_hint"].endswith(created["signing_secret"][-4:])
    assert created["created_at"] == created["updated_at"]
    assert (created["name"], created["url"], created["event_types"]) == (
        "ops",
        "https://hooks.example.com/ft",
        FT_EVENTS,
    )

    _, retrieved = raw(http, key, "GET", f"/webhook_endpoints/{created['id']}")
    _, listed = raw(http, key, "GET", "/webhook_endpoints")
    validate_sdk_type(retrieved, WebhookEndpoint)
    validate_sdk_type(listed, WebhookEndpointList)
    expected = {k: v for k, v in created.items() if k != "signing_secret"}
    assert retrieved == expected
    assert listed["data"] == [expected]
    assert created["signing_secret"] not in str(listed) + str(retrieved)

    sdk = client_a.webhooks.retrieve(created["id"])
    assert (sdk.id, sdk.object, sdk.signing_secret_hint) == (
        created["id"],
        "webhook_endpoint",
        created["signing_secret_hint"],
    )


def test_list_pages_newest_first_as_the_sdk_follows_them(
    client_a: openai.OpenAI, http: TestClient[Any], tenants: dict[str, Tenant]
) -> None:
    made = [
        client_a.webhooks.create(name=f"hook {i}", url=f"https://hooks.example.com/{i}", event_types=FT_EVENTS)
        for i in range(5)
    ]
    newest_first = [e.id for e in reversed(made)]
    assert [e.id for e in client_a.webhooks.list(limit=2)] == newest_first  # auto-paging with `after`
    page = client_a.webhooks.list(limit=2)
    assert ([e.id for e in page.data], page.has_more) == (newest_first[:2], True)
    status, body = raw(http, tenants["a"].key, "GET", "/webhook_endpoints?limit=2&after=" + newest_first[3])
    assert status == 200
    assert (body["data"][0]["id"], body["first_id"], body["last_id"], body["has_more"]) == (
        newest_first[4],
        newest_first[4],
        newest_first[4],
        False,
    )
    for query, param in (("after=whe_nope", "after"), ("limit=0", "limit"), ("limit=101", "limit")):
        status, body = raw(http, tenants["a"].key, "GET", f"/webhook_endpoints?{query}")
        assert (status, body["error"]["param"]) == (400, param), query
        validate_error(body)


def test_update_changes_what_is_given_and_moves_updated_at_only_on_change(
    client_a: openai.OpenAI, http: TestClient[Any], tenants: dict[str, Tenant], stores: Stores
) -> None:
    made = client_a.webhooks.create(name="ops", url="https://hooks.example.com/a", event_types=FT_EVENTS)
    stores.metadata.update_webhook_endpoint(
        made.id, project_id=tenants["a"].project_id, updated_at=made.created_at - 100
    )
    same = client_a.webhooks.update(made.id, name="ops", url="https://hooks.example.com/a")
    assert same.updated_at == made.created_at - 100
    changed = client_a.webhooks.update(
        made.id,
        event_types=["fine_tuning.job.cancelled", "fine_tuning.job.paused", "fine_tuning.job.cancelled"],  # type: ignore[list-item]
    )
    assert changed.event_types == ["fine_tuning.job.cancelled", "fine_tuning.job.paused"]
    assert changed.updated_at is not None and changed.updated_at >= made.created_at
    assert (changed.name, changed.url) == ("ops", "https://hooks.example.com/a")
    status, body = raw(http, tenants["a"].key, "POST", f"/webhook_endpoints/{made.id}", json={"url": "ftp://x"})
    assert (status, body["error"]["param"]) == (400, "url")


def test_delete_then_the_endpoint_is_gone(
    client_a: openai.OpenAI, http: TestClient[Any], tenants: dict[str, Tenant]
) -> None:
    made = client_a.webhooks.create(name="ops", url="https://hooks.example.com/a", event_types=FT_EVENTS)
    status, deleted = raw(http, tenants["a"].key, "DELETE", f"/webhook_endpoints/{made.id}")
    assert status == 200
    validate_sdk_type(deleted, DeletedWebhookEndpoint)
    assert deleted == {"id": made.id, "object": "webhook_endpoint.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError) as caught:
        client_a.webhooks.delete(made.id)
    assert (caught.value.code, caught.value.param) == ("webhook_endpoint_not_found", "webhook_endpoint_id")


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"name": "x", "url": "ftp://hooks.example.com", "event_types": FT_EVENTS}, "url", "invalid_url"),
        ({"name": "x", "url": "not a url", "event_types": FT_EVENTS}, "url", "invalid_url"),
        ({"name": "x", "url": "https://u:p@hooks.example.com", "event_types": FT_EVENTS}, "url", "invalid_url"),
        (
            {"name": "x", "url": "https://hooks.example.com/" + "a" * 2048, "event_types": FT_EVENTS},
            "url",
            "invalid_value",
        ),
        (
            {
                "name": "x",
                "url": "https://hooks.example.com",
                "event_types": ["fine_tuning.job.succeeded", "batch.completed"],
            },
            "event_types[1]",
            "invalid_value",
        ),
        ({"name": "x", "url": "https://hooks.example.com", "event_types": []}, "event_types", "invalid_value"),
        (
            {"name": "x", "url": "https://hooks.example.com", "event_types": "fine_tuning.job.failed"},
            "event_types",
            "invalid_type",
        ),
        ({"name": "", "url": "https://hooks.example.com", "event_types": FT_EVENTS}, "name", "invalid_value"),
        ({"name": "x" * 257, "url": "https://hooks.example.com", "event_types": FT_EVENTS}, "name", "invalid_value"),
        ({"url": "https://hooks.example.com", "event_types": FT_EVENTS}, "name", "missing_required_parameter"),
        (
            {"name": "x", "url": "https://hooks.example.com", "event_types": FT_EVENTS, "secret": "mine"},
            "secret",
            "unknown_parameter",
        ),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_bad_input_is_a_400_naming_the_param(
    http: TestClient[Any], tenants: dict[str, Tenant], body: dict[str, Any], param: str, code: str
) -> None:
    status, answer = raw(http, tenants["a"].key, "POST", "/webhook_endpoints", json=body)
    assert (status, answer["error"]["param"], answer["error"]["code"]) == (400, param, code), answer
    validate_error(answer)


def test_a_project_may_have_sixteen_endpoints(client_a: openai.OpenAI) -> None:
    for index in range(16):
        client_a.webhooks.create(name=f"h{index}", url="https://hooks.example.com/", event_types=FT_EVENTS)
    with pytest.raises(openai.BadRequestError) as caught:
        client_a.webhooks.create(name="one more", url="https://hooks.example.com/", event_types=FT_EVENTS)
    assert caught.value.code == "limit_exceeded"


def test_private_targets_are_refused_at_create_by_default(
    settings: Settings, stores: Stores, tenants: dict[str, Tenant]
) -> None:
    strict = msgspec.structs.replace(settings, webhook_allow_private=False)  # the default
    app = create_app(strict, stores, sweep=False, send_webhooks=False)
    with TestClient(app, base_url="http://testserver.local") as http:
        key = tenants["a"].key
        for url in (
            "http://hooks.example.com/",  # https only
            "https://127.0.0.1/",
            "https://localhost:8443/",
            "https://10.1.2.3/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[::ffff:192.168.0.1]/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://224.0.0.1/",
        ):
            status, body = raw(
                http, key, "POST", "/webhook_endpoints", json={"name": "x", "url": url, "event_types": FT_EVENTS}
            )
            assert (status, body["error"]["param"], body["error"]["code"]) == (400, "url", "invalid_url"), url
        status, _ = raw(
            http,
            key,
            "POST",
            "/webhook_endpoints",
            json={"name": "x", "url": "https://8.8.8.8/", "event_types": FT_EVENTS},
        )
        assert status == 200


def test_another_projects_endpoint_is_404_and_admin_keys_are_403(
    sdk: Callable[[str], openai.OpenAI], http: TestClient[Any], stores: Stores, tenants: dict[str, Tenant]
) -> None:
    made = sdk(tenants["a"].key).webhooks.create(name="ops", url="https://hooks.example.com/", event_types=FT_EVENTS)
    for other in (tenants["a2"].key, tenants["b"].key):
        client = sdk(other)
        assert client.webhooks.list().data == []
        for call in (
            lambda c=client: c.webhooks.retrieve(made.id),
            lambda c=client: c.webhooks.update(made.id, name="mine"),
            lambda c=client: c.webhooks.delete(made.id),
            lambda c=client: c.webhooks.rotate_secret(made.id),
            lambda c=client: c.webhooks.test(made.id, event_type="fine_tuning.job.succeeded"),
        ):
            with pytest.raises(openai.NotFoundError) as caught:
                call()
            assert caught.value.code == "webhook_endpoint_not_found"
        status, body = raw(http, other, "GET", f"/webhook_endpoints/{made.id}/deliveries")
        assert (status, body["error"]["code"]) == (404, "webhook_endpoint_not_found")
    admin = make_key(stores, organization_id=tenants["a"].organization_id, project_id=None, kind="admin").secret_hash
    for key in (admin, OPERATOR_KEY):
        for method, path in (
            ("GET", "/webhook_endpoints"),
            ("GET", f"/webhook_endpoints/{made.id}"),
            ("GET", "/webhook_event_types"),
        ):
            status, body = raw(http, key, method, path)
            assert (status, body["error"]["code"]) == (403, "insufficient_permissions"), (key, path)
    assert sdk(tenants["a"].key).webhooks.retrieve(made.id).name == "ops"


def test_rotate_secret_answers_a_new_secret(
    client_a: openai.OpenAI, http: TestClient[Any], tenants: dict[str, Tenant], stores: Stores
) -> None:
    made = client_a.webhooks.create(name="ops", url="https://hooks.example.com/", event_types=FT_EVENTS)
    status, rotated = raw(http, tenants["a"].key, "POST", f"/webhook_endpoints/{made.id}/rotate_secret", json={})
    assert status == 200
    validate_sdk_type(rotated, WebhookEndpointWithSecret)
    assert rotated["signing_secret"] != made.signing_secret
    kept = client_a.webhooks.rotate_secret(made.id, keep_old_secret_active_for_24_hours=True)
    assert kept.signing_secret not in (made.signing_secret, rotated["signing_secret"])
    assert client_a.webhooks.retrieve(made.id).signing_secret_hint == kept.signing_secret_hint
    record = stores.metadata.get_webhook_endpoint(made.id, project_id=tenants["a"].project_id)
    assert (record.secret, record.previous_secret) == (kept.signing_secret, rotated["signing_secret"])
    assert record.previous_secret_expires_at is not None
    assert record.previous_secret_expires_at - record.updated_at == 24 * 3600
    no_body = http.post(
        f"/v1/webhook_endpoints/{made.id}/rotate_secret", headers={"Authorization": f"Bearer {tenants['a'].key}"}
    )
    assert no_body.status_code == 200
    assert stores.metadata.get_webhook_endpoint(made.id, project_id=tenants["a"].project_id).previous_secret is None


def test_test_sends_a_signed_sample_event_and_answers_its_status(
    client_a: openai.OpenAI, receiver: Receiver, http: TestClient[Any], tenants: dict[str, Tenant]
) -> None:
    made = client_a.webhooks.create(name="ops", url=receiver.url("/sample"), event_types=["fine_tuning.job.failed"])
    receiver.fail_next(503)
    status, result = raw(
        http,
        tenants["a"].key,
        "POST",
        f"/webhook_endpoints/{made.id}/test",
        json={"event_type": "fine_tuning.job.succeeded"},
    )
    assert status == 200
    validate_sdk_type(result, WebhookEndpointTestResult)
    assert result == {
        "event_type": "fine_tuning.job.succeeded",
        "object": "webhook_endpoint.test",
        "status_code": 503,
        "success": True,
        "webhook_endpoint_id": made.id,
    }
    ok = client_a.webhooks.test(made.id, event_type="fine_tuning.job.cancelled")
    assert (ok.status_code, ok.success) == (200, True)
    first, second = receiver.wait_for(2)
    for received, event_type in ((first, "fine_tuning.job.succeeded"), (second, "fine_tuning.job.cancelled")):
        event = client_a.webhooks.unwrap(received.body, received.headers, secret=made.signing_secret)
        assert (event.type, event.data.id) == (event_type, "ftjob-test")
        validate_webhook_event(
            json.loads(received.body),
            "WebhookFineTuningJobSucceeded" if event_type.endswith("succeeded") else "WebhookFineTuningJobCancelled",
        )
        assert received.path == "/sample"
    assert first.headers["webhook-id"] != second.headers["webhook-id"]
    client_a.webhooks.test(made.id, event_type="spend_alert.triggered")
    spend = receiver.wait_for(3)[2]
    client_a.webhooks.verify_signature(spend.body, spend.headers, secret=made.signing_secret)
    body = json.loads(spend.body)
    assert (body["type"], body["data"]["object"], body["data"]["currency"]) == (
        "spend_alert.triggered",
        "project.spend_alert",
        "USD",
    )


def test_test_refuses_events_this_server_does_not_send_and_reports_an_unreachable_endpoint(
    client_a: openai.OpenAI, receiver: Receiver
) -> None:
    made = client_a.webhooks.create(name="ops", url=receiver.url(), event_types=FT_EVENTS)
    with pytest.raises(openai.BadRequestError) as caught:
        client_a.webhooks.test(made.id, event_type="batch.completed")
    assert (caught.value.param, caught.value.code) == ("event_type", "invalid_value")
    receiver.close()
    with pytest.raises(openai.BadRequestError) as caught:
        client_a.webhooks.test(made.id, event_type="fine_tuning.job.failed")
    assert caught.value.code == "webhook_test_failed"
    assert receiver.received == []


def test_event_types_lists_what_this_server_sends(
    client_a: openai.OpenAI, http: TestClient[Any], tenants: dict[str, Tenant]
) -> None:
    status, body = raw(http, tenants["a"].key, "GET", "/webhook_event_types")
    assert status == 200
    validate_sdk_type(body, WebhookEventTypeList)
    assert client_a.webhooks.event_types.list().data == [*FT_EVENTS, "fine_tuning.job.paused", "spend_alert.triggered"]

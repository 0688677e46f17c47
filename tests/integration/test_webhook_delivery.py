"""Webhook deliveries end to end: job changes write the outbox, the API's sender delivers, the SDK verifies.

A loopback receiver stands in for a tenant's backend; `client.webhooks.unwrap` checks every request it got.
Retries take milliseconds here (fixtures/webhooks.py `FAST_WEBHOOKS`).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import msgspec
import openai
import pytest
from fixtures.app import Tenant, backend_settings, make_key
from fixtures.contract import validate_webhook_event
from fixtures.stores import make_job
from fixtures.webhooks import FAST_WEBHOOKS, Receiver
from litestar.testing import TestClient

from tunewright.api.app import create_app
from tunewright.api.webhooks.sender import WebhookSender
from tunewright.api.webhooks.signing import new_secret
from tunewright.storage.ids import new_id
from tunewright.storage.records import WebhookDeliveryRecord, WebhookEndpointRecord
from tunewright.storage.registry import open_stores

if TYPE_CHECKING:
    from collections.abc import Callable

    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

pytestmark = pytest.mark.integration

FT_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]
SCHEMAS = {
    "fine_tuning.job.succeeded": "WebhookFineTuningJobSucceeded",
    "fine_tuning.job.failed": "WebhookFineTuningJobFailed",
    "fine_tuning.job.cancelled": "WebhookFineTuningJobCancelled",
}


@pytest.fixture
def settings(tmp_path: Any, request: pytest.FixtureRequest, backend: str) -> Settings:
    return backend_settings(request, tmp_path, backend, **FAST_WEBHOOKS)


def cancel_a_job(client: openai.OpenAI, stores: Stores, tenant: Tenant) -> str:
    job = make_job(stores.metadata, tenant.project_id, status="queued")
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    return job.id


def end_a_job(stores: Stores, tenant: Tenant, status: str) -> str:
    """A job a worker claims and ends `succeeded` or `failed` through the queue, as the trainer does."""
    job = make_job(stores.metadata, tenant.project_id, status="queued")
    claim = stores.queue.claim("worker-1", lease_s=30, max_running_per_project=100)
    assert claim is not None
    assert claim.job_id == job.id
    assert stores.queue.complete(claim, status=status)
    return job.id


def verified(client: openai.OpenAI, received: Any, secret: str) -> Any:
    """The event `client.webhooks.unwrap` reads from one request, its body checked against OpenAI's schema."""
    event = client.webhooks.unwrap(received.body, received.headers, secret=secret)
    if event.type in SCHEMAS:
        validate_webhook_event(json.loads(received.body), SCHEMAS[event.type])
    return event


def deliveries(http: TestClient[Any], key: str, endpoint_id: str, **query: Any) -> dict[str, Any]:
    response = http.get(
        f"/v1/webhook_endpoints/{endpoint_id}/deliveries", params=query, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def wait_until(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_delivery_is_retried_until_acknowledged_with_one_webhook_id(
    client_a: openai.OpenAI, stores: Stores, tenants: dict[str, Tenant], receiver: Receiver, http: TestClient[Any]
) -> None:
    endpoint = client_a.webhooks.create(name="ops", url=receiver.url(), event_types=FT_EVENTS)
    receiver.fail_next(500, 503)
    job_id = cancel_a_job(client_a, stores, tenants["a"])

    requests = receiver.wait_for(3)
    assert [r.status for r in requests] == [500, 503, 200]
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1  # the same event, byte for byte
    for received in requests:
        event = verified(client_a, received, endpoint.signing_secret)
        assert (event.type, event.data.id, event.object) == ("fine_tuning.job.cancelled", job_id, "event")
        assert received.headers["content-type"] == "application/json"

    key = tenants["a"].key
    wait_until(lambda: deliveries(http, key, endpoint.id)["data"][0]["status"] == "succeeded")
    (delivery,) = deliveries(http, key, endpoint.id)["data"]
    assert delivery["id"] == requests[0].headers["webhook-id"]
    assert (delivery["object"], delivery["event_type"], delivery["attempt_count"]) == (
        "webhook_endpoint.delivery",
        "fine_tuning.job.cancelled",
        3,
    )
    assert delivery["event_id"] == json.loads(requests[0].body)["id"]
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 200]
    assert (delivery["next_attempt_at"], delivery["finished_at"] is not None) == (None, True)
    assert deliveries(http, key, endpoint.id, status="pending")["data"] == []
    bad = http.get(
        f"/v1/webhook_endpoints/{endpoint.id}/deliveries?status=late", headers={"Authorization": f"Bearer {key}"}
    )
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "status")

    metrics = http.get("/metrics").text
    assert 'tunewright_webhook_delivery_attempts_total{outcome="http_error"} 2.0' in metrics
    assert 'tunewright_webhook_delivery_attempts_total{outcome="succeeded"} 1.0' in metrics
    assert 'tunewright_webhook_deliveries_total{outcome="succeeded"} 1.0' in metrics
    assert "tunewright_webhook_backlog_deliveries 0.0" in metrics


def test_job_ends_send_openais_events_and_paused_only_where_listed(
    client_a: openai.OpenAI, stores: Stores, tenants: dict[str, Tenant], receiver: Receiver
) -> None:
    tenant = tenants["a"]
    openai_only = client_a.webhooks.create(name="ft", url=receiver.url("/ft"), event_types=FT_EVENTS)
    paused_only = client_a.webhooks.create(
        name="paused",
        url=receiver.url("/paused"),
        event_types=["fine_tuning.job.paused"],  # type: ignore[list-item] - Tunewright's own event
    )
    end_a_job(stores, tenants["b"], "succeeded")  # another project's jobs never reach these endpoints

    succeeded = end_a_job(stores, tenant, "succeeded")
    failed = end_a_job(stores, tenant, "failed")
    running = make_job(stores.metadata, tenant.project_id, status="running")
    client_a.fine_tuning.jobs.pause(running.id)
    client_a.fine_tuning.jobs.resume(running.id)  # no event
    cancelled = cancel_a_job(client_a, stores, tenant)

    requests = receiver.wait_for(4)
    time.sleep(0.2)  # nothing more comes
    assert len(receiver.received) == 4
    by_path: dict[str, list[tuple[str, str]]] = {}
    for received in requests:
        secret = openai_only.signing_secret if received.path == "/ft" else paused_only.signing_secret
        event = verified(client_a, received, secret)
        by_path.setdefault(received.path, []).append((event.type, event.data.id))
    assert sorted(by_path["/ft"]) == sorted(
        [
            ("fine_tuning.job.succeeded", succeeded),
            ("fine_tuning.job.failed", failed),
            ("fine_tuning.job.cancelled", cancelled),
        ]
    )
    assert by_path["/paused"] == [("fine_tuning.job.paused", running.id)]


def test_rotation_keeps_the_old_secret_only_when_asked_and_only_for_its_grace(
    client_a: openai.OpenAI, stores: Stores, tenants: dict[str, Tenant], receiver: Receiver
) -> None:
    tenant = tenants["a"]
    first = client_a.webhooks.create(name="ops", url=receiver.url(), event_types=FT_EVENTS)
    second = client_a.webhooks.rotate_secret(first.id, keep_old_secret_active_for_24_hours=True)
    cancel_a_job(client_a, stores, tenant)
    (within,) = receiver.wait_for(1)
    assert len(within.headers["webhook-signature"].split()) == 2
    verified(client_a, within, first.signing_secret)
    verified(client_a, within, second.signing_secret)

    # A day later: the grace is over.
    stores.metadata.update_webhook_endpoint(
        first.id, project_id=tenant.project_id, previous_secret_expires_at=int(time.time()) - 1
    )
    cancel_a_job(client_a, stores, tenant)
    after = receiver.wait_for(2)[1]
    verified(client_a, after, second.signing_secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client_a.webhooks.unwrap(after.body, after.headers, secret=first.signing_secret)

    third = client_a.webhooks.rotate_secret(first.id)  # not kept: the old secret stops at once
    cancel_a_job(client_a, stores, tenant)
    last = receiver.wait_for(3)[2]
    verified(client_a, last, third.signing_secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client_a.webhooks.unwrap(last.body, last.headers, secret=second.signing_secret)


def test_no_delivery_is_lost_across_an_api_restart(
    settings: Settings, stores: Stores, tenants: dict[str, Tenant], receiver: Receiver
) -> None:
    tenant = tenants["a"]
    receiver.always = 503  # the backend is down while the first API runs
    first_app = create_app(settings, stores, sweep=False)
    with TestClient(first_app, base_url="http://testserver.local") as http:
        client = openai.OpenAI(
            base_url="http://testserver.local/v1", api_key=tenant.key, http_client=http, max_retries=0
        )
        endpoint = client.webhooks.create(name="ops", url=receiver.url(), event_types=FT_EVENTS)
        job_id = cancel_a_job(client, stores, tenant)
        receiver.wait_for(1)
    stores.close()  # the API process is gone; its outbox rows are in the database

    receiver.always = None
    reopened = open_stores(settings)
    try:
        second_app = create_app(settings, reopened, sweep=False)
        with TestClient(second_app, base_url="http://testserver.local") as http:
            client = openai.OpenAI(
                base_url="http://testserver.local/v1", api_key=tenant.key, http_client=http, max_retries=0
            )
            wait_until(lambda: any(r.status == 200 for r in receiver.received))
            ok = next(r for r in receiver.received if r.status == 200)
            assert ok.headers["webhook-id"] == receiver.received[0].headers["webhook-id"]
            assert verified(client, ok, endpoint.signing_secret).data.id == job_id
    finally:
        reopened.close()


def test_a_delivery_is_given_up_after_the_retry_window(
    settings: Settings, stores: Stores, tenants: dict[str, Tenant], receiver: Receiver
) -> None:
    tenant = tenants["a"]
    receiver.always = 500
    # The window counts from the event's `created_at`, whole seconds: a 2 s window leaves at least 1 s of retries.
    app = create_app(msgspec.structs.replace(settings, webhook_retry_window_s=2), stores, sweep=False)
    with TestClient(app, base_url="http://testserver.local") as http:
        client = openai.OpenAI(
            base_url="http://testserver.local/v1", api_key=tenant.key, http_client=http, max_retries=0
        )
        endpoint = client.webhooks.create(name="ops", url=receiver.url(), event_types=FT_EVENTS)
        cancel_a_job(client, stores, tenant)
        wait_until(lambda: deliveries(http, tenant.key, endpoint.id)["data"][0]["status"] == "failed")
        count = len(receiver.received)
        (delivery,) = deliveries(http, tenant.key, endpoint.id)["data"]
        assert delivery["attempt_count"] == count > 1
        assert delivery["next_attempt_at"] is None
        assert delivery["attempts"][-1]["error"] == "the endpoint answered 500"
        time.sleep(0.2)
        assert len(receiver.received) == count  # no more attempts
        assert 'tunewright_webhook_deliveries_total{outcome="failed"} 1.0' in http.get("/metrics").text


def test_api_processes_sharing_the_outbox_send_each_delivery_once(
    settings: Settings, stores: Stores, tenants: dict[str, Tenant], receiver: Receiver, client_a: openai.OpenAI
) -> None:
    tenant = tenants["a"]
    client_a.webhooks.create(name="ops", url=receiver.url(), event_types=FT_EVENTS)
    replicas = [open_stores(settings) for _ in range(3)]  # one pool (one "process") per API replica
    try:
        apps = [create_app(settings, replica, sweep=False) for replica in replicas]
        clients = [TestClient(app, base_url="http://testserver.local") for app in apps]
        for http in clients:
            http.__enter__()
        try:
            job_ids = {cancel_a_job(client_a, stores, tenant) for _ in range(12)}
            requests = receiver.wait_for(12)
            time.sleep(0.3)
        finally:
            for http in clients:
                http.__exit__(None, None, None)
    finally:
        for replica in replicas:
            replica.close()
    assert len(receiver.received) == 12
    assert len({r.headers["webhook-id"] for r in requests}) == 12
    assert {json.loads(r.body)["data"]["id"] for r in requests} == job_ids


def run_sender(sender: WebhookSender, until: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Run a sender on its own event loop until `until()` holds."""

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(sender.run)
            with anyio.fail_after(timeout_s):
                while not await anyio.to_thread.run_sync(until):
                    await anyio.sleep(0.02)
            group.cancel_scope.cancel()

    anyio.run(main)


def endpoint_and_cancelled_job(stores: Stores, tenant: Tenant, url: str) -> tuple[WebhookEndpointRecord, str]:
    """An endpoint and a cancelled job written straight to the stores: no app, so no other sender runs."""
    now = int(time.time())
    endpoint = WebhookEndpointRecord(
        id=new_id("webhook_endpoint"),
        project_id=tenant.project_id,
        created_at=now,
        updated_at=now,
        name="hooks",
        url=url,
        event_types=FT_EVENTS,
        secret=new_secret(),
    )
    stores.metadata.create_webhook_endpoint(endpoint, max_per_project=16)
    job = make_job(stores.metadata, tenant.project_id, status="queued")
    stores.metadata.transition_job(job.id, project_id=tenant.project_id, allowed=["queued"], status="cancelled")
    return endpoint, job.id


def test_a_name_that_resolves_to_a_private_address_is_refused_at_delivery(
    settings: Settings, stores: Stores, tenants: dict[str, Tenant], receiver: Receiver
) -> None:
    tenant = tenants["a"]
    strict = msgspec.structs.replace(settings, webhook_allow_private=False)  # the default
    endpoint, _ = endpoint_and_cancelled_job(stores, tenant, f"https://hooks.example.com:{receiver.port}/")

    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "127.0.0.1"]  # one private answer refuses the name

    def delivery() -> WebhookDeliveryRecord:
        page = stores.metadata.list_webhook_deliveries(
            endpoint.id, project_id=tenant.project_id, status=None, after=None, limit=1
        )
        return page.items[0]

    run_sender(WebhookSender(stores, strict, resolver=resolver), lambda: delivery().attempts >= 2)
    assert receiver.received == []
    refused = delivery()
    assert refused.status == "pending"  # retried until the window ends: the name may be fixed meanwhile
    assert refused.attempt_log[0]["error"] == (
        "refused: the host hooks.example.com resolves to a loopback address (127.0.0.1)"
    )
    assert refused.attempt_log[0]["status_code"] is None


def test_an_attempt_connects_to_the_address_it_checked(
    settings: Settings, stores: Stores, tenants: dict[str, Tenant], receiver: Receiver
) -> None:
    """The name is resolved once, by the check, and the request goes to that address with the name as Host."""
    endpoint, job_id = endpoint_and_cancelled_job(stores, tenants["a"], f"http://hooks.invalid:{receiver.port}/in")
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]  # `.invalid` never resolves through DNS: only the checked address can be reached

    run_sender(WebhookSender(stores, settings, resolver=resolver), lambda: bool(receiver.received))
    (received,) = receiver.received
    assert lookups == ["hooks.invalid"]
    assert (received.path, received.headers["host"]) == ("/in", f"hooks.invalid:{receiver.port}")
    client = openai.OpenAI(api_key="unused", max_retries=0)
    assert verified(client, received, endpoint.secret).data.id == job_id


def test_deliveries_are_the_projects_own(
    sdk: Callable[[str], openai.OpenAI], http: TestClient[Any], tenants: dict[str, Tenant], stores: Stores
) -> None:
    endpoint = sdk(tenants["a"].key).webhooks.create(
        name="ops", url="https://hooks.example.com/", event_types=FT_EVENTS
    )
    body = deliveries(http, tenants["a"].key, endpoint.id)
    assert (body["data"], body["first_id"], body["has_more"]) == ([], None, False)
    for key in (tenants["a2"].key, tenants["b"].key):
        response = http.get(
            f"/v1/webhook_endpoints/{endpoint.id}/deliveries", headers={"Authorization": f"Bearer {key}"}
        )
        assert (response.status_code, response.json()["error"]["code"]) == (404, "webhook_endpoint_not_found")
    admin = make_key(stores, organization_id=tenants["a"].organization_id, project_id=None, kind="admin").secret_hash
    response = http.get(f"/v1/webhook_endpoints/{endpoint.id}/deliveries", headers={"Authorization": f"Bearer {admin}"})
    assert response.status_code == 403

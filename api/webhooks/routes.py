"""HTTP routes of /v1/webhook_endpoints and /v1/webhook_event_types: decode, one service call, wire Struct.

Project keys only; another project's endpoint is a 404. `GET …/{id}/deliveries` is Tunewright's own.
"""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from litestar import Controller, delete, get, post
from litestar.params import Body, FromPath, FromQuery, JSONBody

from tunewright.api.auth import Caller, require_project
from tunewright.api.dependencies import AppSettings, AppStores
from tunewright.api.pagination import check_choice, check_limit, edge_ids
from tunewright.api.schemas import CursorPageWithIds
from tunewright.api.scopes import SCOPE
from tunewright.api.webhooks import service
from tunewright.api.webhooks.schemas import (
    DeletedWebhookEndpoint,
    WebhookCreateParams,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointTestResult,
    WebhookEndpointWithSecret,
    WebhookEventTypeList,
    WebhookRotateSecretParams,
    WebhookTestParams,
    WebhookUpdateParams,
)
from tunewright.storage.outbox import EVENT_TYPES

MAX_LIMIT = 100


class WebhookEndpointsController(Controller):
    """`/v1/webhook_endpoints`: the project's endpoints, newest first."""

    path = "/v1/webhook_endpoints"
    guards = [require_project]
    opt = {SCOPE: "webhooks"}
    tags = ["Webhooks"]

    @post("/", status_code=200, sync_to_thread=True)
    def create_webhook_endpoint(
        self, stores: AppStores, settings: AppSettings, principal: Caller, data: JSONBody[WebhookCreateParams]
    ) -> WebhookEndpointWithSecret:
        """Create an endpoint; its signing secret is answered here and on rotation only."""
        return WebhookEndpointWithSecret.from_record(service.create_endpoint(stores, settings, data, principal))

    @get("/", sync_to_thread=False)
    def list_webhook_endpoints(
        self,
        stores: AppStores,
        principal: Caller,
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 20,
    ) -> CursorPageWithIds[WebhookEndpoint]:
        """List the project's endpoints, newest first."""
        page = stores.metadata.list_webhook_endpoints(
            project_id=principal.project_id or "", after=after, limit=check_limit(limit, maximum=MAX_LIMIT)
        )
        first_id, last_id = edge_ids(page.items)
        return CursorPageWithIds(
            data=[WebhookEndpoint.from_record(r) for r in page.items],
            first_id=first_id,
            last_id=last_id,
            has_more=page.has_more,
        )

    @get("/{webhook_endpoint_id:str}", sync_to_thread=False)
    def retrieve_webhook_endpoint(
        self, stores: AppStores, principal: Caller, webhook_endpoint_id: FromPath[str]
    ) -> WebhookEndpoint:
        """Return one endpoint (never its secret)."""
        record = service.get_endpoint(stores, webhook_endpoint_id, project_id=principal.project_id or "")
        return WebhookEndpoint.from_record(record)

    @post("/{webhook_endpoint_id:str}", status_code=200, sync_to_thread=True)
    def update_webhook_endpoint(
        self,
        stores: AppStores,
        settings: AppSettings,
        principal: Caller,
        webhook_endpoint_id: FromPath[str],
        data: JSONBody[WebhookUpdateParams],
    ) -> WebhookEndpoint:
        """Change an endpoint's name, URL or event types."""
        record = service.update_endpoint(stores, settings, webhook_endpoint_id, data, principal)
        return WebhookEndpoint.from_record(record)

    @delete("/{webhook_endpoint_id:str}", status_code=200, sync_to_thread=True)
    def delete_webhook_endpoint(
        self, stores: AppStores, principal: Caller, webhook_endpoint_id: FromPath[str]
    ) -> DeletedWebhookEndpoint:
        """Delete an endpoint and its deliveries."""
        record = service.delete_endpoint(stores, webhook_endpoint_id, principal)
        return DeletedWebhookEndpoint(id=record.id)

    @post("/{webhook_endpoint_id:str}/rotate_secret", status_code=200, sync_to_thread=True)
    def rotate_webhook_endpoint_secret(
        self,
        stores: AppStores,
        principal: Caller,
        webhook_endpoint_id: FromPath[str],
        data: Annotated[WebhookRotateSecretParams | None, Body()] = None,
    ) -> WebhookEndpointWithSecret:
        """Give the endpoint a new signing secret, keeping the old one valid for 24 h if asked."""
        record = service.rotate_secret(stores, webhook_endpoint_id, data, principal)
        return WebhookEndpointWithSecret.from_record(record)

    @post("/{webhook_endpoint_id:str}/test", status_code=200)
    async def test_webhook_endpoint(
        self,
        stores: AppStores,
        settings: AppSettings,
        principal: Caller,
        webhook_endpoint_id: FromPath[str],
        data: JSONBody[WebhookTestParams],
    ) -> WebhookEndpointTestResult:
        """Send a sample event to the endpoint now and answer the status code it returned."""
        record = await anyio.to_thread.run_sync(
            lambda: service.get_endpoint(stores, webhook_endpoint_id, project_id=principal.project_id or "")
        )
        return await service.send_test_event(record, settings, data)

    @get("/{webhook_endpoint_id:str}/deliveries", sync_to_thread=False)
    def list_webhook_deliveries(
        self,
        stores: AppStores,
        principal: Caller,
        webhook_endpoint_id: FromPath[str],
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 20,
        status: FromQuery[str | None] = None,
    ) -> CursorPageWithIds[WebhookDelivery]:
        """Tunewright extension: deliveries to the endpoint, newest first, each with its latest attempts."""
        if status is not None:
            check_choice(status, service.DELIVERY_STATUSES, param="status")
        page = service.list_deliveries(
            stores,
            webhook_endpoint_id,
            project_id=principal.project_id or "",
            status=status,
            after=after,
            limit=check_limit(limit, maximum=MAX_LIMIT),
        )
        first_id, last_id = edge_ids(page.items)
        return CursorPageWithIds(
            data=[WebhookDelivery.from_record(r) for r in page.items],
            first_id=first_id,
            last_id=last_id,
            has_more=page.has_more,
        )


@get(
    "/v1/webhook_event_types",
    guards=[require_project],
    opt={SCOPE: "webhooks"},
    tags=["Webhooks"],
    sync_to_thread=False,
)
def list_webhook_event_types() -> WebhookEventTypeList:
    """The event types an endpoint may subscribe to: OpenAI's three fine-tuning events and Tunewright's paused."""
    return WebhookEventTypeList(data=list(EVENT_TYPES))


ROUTES = [WebhookEndpointsController, list_webhook_event_types]

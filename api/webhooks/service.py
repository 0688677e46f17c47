"""Rules of /v1/webhook_endpoints: event types, target URLs, secrets and their rotation, the test event."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from msgspec import UNSET

from tunewright.api.errors import InvalidRequestError, NotFoundError, echo
from tunewright.api.webhooks.delivery import http_client, send_attempt
from tunewright.api.webhooks.schemas import WebhookEndpointTestResult
from tunewright.api.webhooks.signing import new_secret
from tunewright.api.webhooks.targets import system_resolver, url_refusal
from tunewright.storage.errors import LimitExceeded, NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.outbox import (
    EVENT_TYPES,
    SPEND_ALERT_EVENT,
    event_body,
    event_payload,
    signing_secrets,
    spend_alert_data,
)
from tunewright.storage.records import WebhookEndpointRecord

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tunewright.api.auth import Principal
    from tunewright.api.webhooks.schemas import (
        WebhookCreateParams,
        WebhookRotateSecretParams,
        WebhookTestParams,
        WebhookUpdateParams,
    )
    from tunewright.api.webhooks.targets import Resolver
    from tunewright.storage.base import Stores
    from tunewright.storage.records import Page, WebhookDeliveryRecord
    from tunewright.storage.settings import Settings

MAX_ENDPOINTS_PER_PROJECT = 16
"""Endpoints one project may have: every job end is sent to each subscribed one."""
ROTATION_GRACE_S = 24 * 3600
"""How long a rotated-out secret still signs, when the rotation asked to keep it."""
TEST_JOB_ID = "ftjob-test"
"""The job id a test event names: no job has it."""
TEST_ALERT_ID = "alert_test"
TEST_PROJECT_ID = "proj_test"
"""The alert and project a test `spend_alert.triggered` names: none has these ids."""
DELIVERY_STATUSES = ("pending", "succeeded", "failed")


def endpoint_not_found(endpoint_id: str) -> NotFoundError:
    """404 for an endpoint id that is not in the caller's project."""
    return NotFoundError(
        f"No webhook endpoint found with id '{echo(endpoint_id)}'.",
        param="webhook_endpoint_id",
        code="webhook_endpoint_not_found",
    )


def check_event_type(value: str, *, param: str) -> str:
    """Return `value` if this server sends it, else 400 naming `param` and listing the ones it does."""
    if value not in EVENT_TYPES:
        supported = ", ".join(f"'{t}'" for t in EVENT_TYPES)
        raise InvalidRequestError(
            f"Invalid value for '{param}': this server does not send '{echo(value)}' events; it sends {supported}.",
            param=param,
            code="invalid_value",
        )
    return value


def check_event_types(values: Sequence[str]) -> list[str]:
    """The event types of an endpoint, each checked, repeats dropped."""
    for index, value in enumerate(values):
        check_event_type(value, param=f"event_types[{index}]")
    return list(dict.fromkeys(values))


def check_url(url: str, settings: Settings) -> str:
    """Return `url` if webhooks may be sent there (judged without DNS), else 400 naming `url`."""
    reason = url_refusal(url, allow_private=settings.webhook_allow_private)
    if reason is not None:
        hint = "" if settings.webhook_allow_private else " (private, loopback and link-local targets are refused)"
        raise InvalidRequestError(f"Invalid 'url': '{echo(url)}' {reason}{hint}.", param="url", code="invalid_url")
    return url


def get_endpoint(stores: Stores, endpoint_id: str, *, project_id: str) -> WebhookEndpointRecord:
    """Return an endpoint of the project or raise 404."""
    try:
        return stores.metadata.get_webhook_endpoint(endpoint_id, project_id=project_id)
    except NotFound:
        raise endpoint_not_found(endpoint_id) from None


def create_endpoint(
    stores: Stores, settings: Settings, data: WebhookCreateParams, principal: Principal
) -> WebhookEndpointRecord:
    """Check and store a new endpoint with a fresh secret."""
    now = int(time.time())
    record = WebhookEndpointRecord(
        id=new_id("webhook_endpoint"),
        project_id=principal.project_id or "",
        created_at=now,
        updated_at=now,
        name=data.name,
        url=check_url(data.url, settings),
        event_types=check_event_types(data.event_types),
        secret=new_secret(),
    )
    try:
        stores.metadata.create_webhook_endpoint(
            record, max_per_project=MAX_ENDPOINTS_PER_PROJECT, actor=principal.actor
        )
    except LimitExceeded:
        raise InvalidRequestError(
            f"This project already has {MAX_ENDPOINTS_PER_PROJECT} webhook endpoints, the most it may have; "
            "delete one first.",
            code="limit_exceeded",
        ) from None
    return record


def update_endpoint(
    stores: Stores, settings: Settings, endpoint_id: str, data: WebhookUpdateParams, principal: Principal
) -> WebhookEndpointRecord:
    """Apply the fields given; `updated_at` moves only if one of them changes something."""
    project_id = principal.project_id or ""
    current = get_endpoint(stores, endpoint_id, project_id=project_id)
    wanted: dict[str, Any] = {}
    if data.name is not UNSET:
        wanted["name"] = data.name
    if data.url is not UNSET:
        wanted["url"] = check_url(data.url, settings)
    if data.event_types is not UNSET:
        wanted["event_types"] = check_event_types(data.event_types)
    changes = {key: value for key, value in wanted.items() if getattr(current, key) != value}
    if not changes:
        return current
    try:
        return stores.metadata.update_webhook_endpoint(
            endpoint_id, project_id=project_id, actor=principal.actor, **changes, updated_at=int(time.time())
        )
    except NotFound:
        raise endpoint_not_found(endpoint_id) from None


def delete_endpoint(stores: Stores, endpoint_id: str, principal: Principal) -> WebhookEndpointRecord:
    """Delete an endpoint; its deliveries, sent or not, go with it."""
    try:
        return stores.metadata.delete_webhook_endpoint(
            endpoint_id, project_id=principal.project_id or "", actor=principal.actor
        )
    except NotFound:
        raise endpoint_not_found(endpoint_id) from None


def rotate_secret(
    stores: Stores, endpoint_id: str, data: WebhookRotateSecretParams | None, principal: Principal
) -> WebhookEndpointRecord:
    """Give the endpoint a new secret; the old one keeps signing for 24 h only when asked (else it stops now).

    Deliveries still pending are signed at their next attempt with the secrets in force then.
    """
    project_id = principal.project_id or ""
    current = get_endpoint(stores, endpoint_id, project_id=project_id)
    keep = data is not None and data.keep_old_secret_active_for_24_hours is True
    now = int(time.time())
    try:
        return stores.metadata.update_webhook_endpoint(
            endpoint_id,
            project_id=project_id,
            actor=principal.actor,
            secret=new_secret(),
            previous_secret=current.secret if keep else None,
            previous_secret_expires_at=now + ROTATION_GRACE_S if keep else None,
            updated_at=now,
        )
    except NotFound:
        raise endpoint_not_found(endpoint_id) from None


def list_deliveries(
    stores: Stores, endpoint_id: str, *, project_id: str, status: str | None, after: str | None, limit: int
) -> Page[WebhookDeliveryRecord]:
    """Deliveries to an endpoint of the project, newest first."""
    try:
        return stores.metadata.list_webhook_deliveries(
            endpoint_id, project_id=project_id, status=status, after=after, limit=limit
        )
    except NotFound:
        raise endpoint_not_found(endpoint_id) from None


def sample_event(event_type: str, *, now: int) -> str:
    """The body of a sample event of `event_type`: about a made-up job, or a made-up project alert."""
    event_id = new_id("webhook_event")
    if event_type == SPEND_ALERT_EVENT:
        data = spend_alert_data(
            TEST_ALERT_ID, project_id=TEST_PROJECT_ID, threshold_amount=0, month_start=now, spent_cents=0
        )
        return event_body(event_id, event_type, data, created_at=now)
    return event_payload(event_id, event_type, TEST_JOB_ID, created_at=now)


async def send_test_event(
    record: WebhookEndpointRecord,
    settings: Settings,
    data: WebhookTestParams,
    *,
    resolver: Resolver = system_resolver,
) -> WebhookEndpointTestResult:
    """Send one sample event of `data.event_type` to the endpoint now, signed as a real delivery; not retried.

    Raises:
        InvalidRequestError: an event type this server does not send, or no answer from the endpoint (refused
            target, connection or timeout), naming why.
    """
    event_type = check_event_type(data.event_type, param="event_type")
    now = int(time.time())
    body = sample_event(event_type, now=now).encode()
    keys = signing_secrets(record.secret, record.previous_secret, record.previous_secret_expires_at, now=now)
    async with http_client(settings.webhook_timeout_s) as client:
        result = await send_attempt(
            client,
            record.url,
            webhook_id=new_id("webhook_delivery"),
            body=body,
            keys=keys,
            allow_private=settings.webhook_allow_private,
            resolver=resolver,
            timeout_s=settings.webhook_timeout_s,
        )
    if result.status_code is None:
        raise InvalidRequestError(
            f"The test event could not be delivered to the endpoint: {result.error}.", code="webhook_test_failed"
        )
    return WebhookEndpointTestResult(
        event_type=event_type, status_code=result.status_code, webhook_endpoint_id=record.id
    )

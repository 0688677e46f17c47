"""Wire objects of /v1/webhook_endpoints, as the openai SDK's `client.webhooks` types them.

OpenAI's published OpenAPI subset lacks these schemas; the contract is the SDK's own types
(`openai/types/webhooks/webhook_endpoint*.py`, `deleted_webhook_endpoint.py`, `webhook_event_type_list.py`) and
OpenAI's API reference (`name` 1 to 256 characters, `url` at most 2048). `WebhookDelivery` is Tunewright's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from msgspec import UNSET, Meta, UnsetType

from tunewright.api.schemas import Request, Response

if TYPE_CHECKING:
    from tunewright.storage.records import WebhookDeliveryRecord, WebhookEndpointRecord

Name = Annotated[str, Meta(min_length=1, max_length=256)]
Url = Annotated[str, Meta(min_length=1, max_length=2048)]
EventTypes = Annotated[list[str], Meta(min_length=1, max_length=32)]


class WebhookCreateParams(Request):
    """`POST /v1/webhook_endpoints`."""

    event_types: EventTypes
    name: Name
    url: Url


class WebhookUpdateParams(Request):
    """`POST /v1/webhook_endpoints/{id}`: each field given replaces the endpoint's (`event_types` as a whole)."""

    event_types: EventTypes | UnsetType = UNSET
    name: Name | UnsetType = UNSET
    url: Url | UnsetType = UNSET


class WebhookRotateSecretParams(Request):
    """`POST /v1/webhook_endpoints/{id}/rotate_secret`."""

    keep_old_secret_active_for_24_hours: bool | UnsetType = UNSET


class WebhookTestParams(Request):
    """`POST /v1/webhook_endpoints/{id}/test`."""

    event_type: str


class WebhookEndpoint(Response, kw_only=True):
    """`WebhookEndpoint`: never carries the secret, only a hint of it."""

    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int
    name: str
    url: str
    event_types: list[str]
    signing_secret_hint: str | None

    @classmethod
    def from_record(cls, record: WebhookEndpointRecord) -> WebhookEndpoint:
        """The wire view of an endpoint."""
        return cls(**_endpoint_fields(record))


class WebhookEndpointWithSecret(WebhookEndpoint, kw_only=True):
    """`WebhookEndpointWithSecret`: answered by create and rotate_secret only."""

    signing_secret: str

    @classmethod
    def from_record(cls, record: WebhookEndpointRecord) -> WebhookEndpointWithSecret:
        """The wire view of an endpoint with its current secret."""
        return cls(**_endpoint_fields(record), signing_secret=record.secret)


def _endpoint_fields(record: WebhookEndpointRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "name": record.name,
        "url": record.url,
        "event_types": record.event_types,
        "signing_secret_hint": secret_hint(record.secret),
    }


def secret_hint(secret: str) -> str:
    """A masked hint of a signing secret: its prefix and last four characters."""
    return f"whsec_****{secret[-4:]}"


class DeletedWebhookEndpoint(Response, kw_only=True):
    """`DeletedWebhookEndpoint`."""

    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookEndpointTestResult(Response, kw_only=True):
    """`WebhookEndpointTestResult`: the test request completed; `status_code` is what the endpoint answered."""

    event_type: str
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    status_code: int
    success: Literal[True] = True
    webhook_endpoint_id: str


class WebhookEventTypeList(Response, kw_only=True):
    """`WebhookEventTypeList`: the event types an endpoint of this server may subscribe to."""

    data: list[str]
    object: Literal["list"] = "list"


class WebhookDeliveryAttempt(Response):
    """One attempt of a delivery: when, what the endpoint answered (or why nothing was sent), how long it took."""

    attempted_at: int
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookDelivery(Response, kw_only=True):
    """Tunewright's `webhook_endpoint.delivery`: one event sent (or being sent) to one endpoint.

    `id` is the `webhook-id` header of every attempt; `attempts` lists the latest attempts, oldest first.
    """

    id: str
    object: Literal["webhook_endpoint.delivery"] = "webhook_endpoint.delivery"
    webhook_endpoint_id: str
    event_id: str
    event_type: str
    created_at: int
    status: Literal["pending", "succeeded", "failed"]
    attempt_count: int
    next_attempt_at: int | None
    finished_at: int | None
    attempts: list[WebhookDeliveryAttempt]

    @classmethod
    def from_record(cls, record: WebhookDeliveryRecord) -> WebhookDelivery:
        """The wire view of a delivery."""
        return cls(
            id=record.id,
            webhook_endpoint_id=record.endpoint_id,
            event_id=record.event_id,
            event_type=record.event_type,
            created_at=record.created_at,
            status=record.status,  # type: ignore[arg-type]
            attempt_count=record.attempts,
            next_attempt_at=None if record.next_attempt_at is None else int(record.next_attempt_at),
            finished_at=record.finished_at,
            attempts=[WebhookDeliveryAttempt(**attempt) for attempt in record.attempt_log],
        )

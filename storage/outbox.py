"""The webhook outbox: delivery rows written in the same transaction as the job change they report.

A job's final transaction (the worker's `complete`, the API's cancel) and a pause call `enqueue_job_webhooks`
on their own connection, so a delivery exists exactly when the change committed: a rolled-back change (a lost
lease, a refused compare-and-set) leaves none, and a crash after the commit loses none. The API's sender
(api/webhooks/sender.py) sends them. Nothing here touches the network, so a training worker never waits on a
receiver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from tunewright.storage.ids import new_id
from tunewright.storage.records import JobStatus, WebhookDeliveryRecord, WebhookDeliveryStatus
from tunewright.storage.rows import to_params

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tunewright.storage.db import Connection

JOB_EVENT_TYPES: dict[str, str] = {
    JobStatus.SUCCEEDED: "fine_tuning.job.succeeded",
    JobStatus.FAILED: "fine_tuning.job.failed",
    JobStatus.CANCELLED: "fine_tuning.job.cancelled",
    JobStatus.PAUSED: "fine_tuning.job.paused",
}
"""The event each job status sends. `fine_tuning.job.paused` is Tunewright's own: only endpoints that list it get it."""

SPEND_ALERT_EVENT = "spend_alert.triggered"
"""Tunewright's own event: a project's (or its organization's) month-to-date spend reached a spend alert's threshold.
Only endpoints that list it get it."""

EVENT_TYPES: tuple[str, ...] = (*JOB_EVENT_TYPES.values(), SPEND_ALERT_EVENT)
"""Every event type an endpoint may subscribe to."""


def signing_secrets(secret: str, previous: str | None, previous_until: int | None, *, now: float) -> tuple[str, ...]:
    """The secrets that sign an attempt at `now`: the current one, then the previous one while its grace lasts."""
    if previous and previous_until is not None and previous_until > now:
        return (secret, previous)
    return (secret,)


class _Event(msgspec.Struct, kw_only=True):
    """The body of a fine-tuning webhook event, in OpenAI's shape and key order."""

    id: str
    object: str
    type: str
    created_at: int
    data: dict[str, Any]


def event_payload(event_id: str, event_type: str, job_id: str, *, created_at: int) -> str:
    """Return the JSON body of a fine-tuning job event: `{id, object: "event", type, created_at, data: {id}}`."""
    return event_body(event_id, event_type, {"id": job_id}, created_at=created_at)


def spend_alert_data(
    alert_id: str, *, project_id: str | None, threshold_amount: int, month_start: int, spent_cents: int
) -> dict[str, Any]:
    """The `data` of a `spend_alert.triggered` event: the alert, its scope, and the month's spend in US cents."""
    return {
        "id": alert_id,
        "object": "organization.spend_alert" if project_id is None else "project.spend_alert",
        "project_id": project_id,
        "threshold_amount": threshold_amount,
        "currency": "USD",
        "interval": "month",
        "month_start": month_start,
        "month_to_date_amount": spent_cents,
    }


def event_body(event_id: str, event_type: str, data: dict[str, Any], *, created_at: int) -> str:
    """Return the JSON body of an event: `{id, object: "event", type, created_at, data}`."""
    event = _Event(id=event_id, object="event", type=event_type, created_at=created_at, data=data)
    return msgspec.json.encode(event).decode()


def enqueue_job_webhooks(conn: Connection, *, job_id: str, project_id: str, status: str, now: float) -> int:
    """Write one delivery per endpoint of the project subscribed to the event `status` sends; return how many.

    Runs inside the caller's transaction. One event (one `evt_` id) goes to every subscribed endpoint; each
    delivery has its own `webhook-id`. On PostgreSQL the endpoints are read `FOR KEY SHARE`, so an endpoint
    deleted meanwhile waits for this transaction (and then takes its deliveries with it).
    """
    event_type = JOB_EVENT_TYPES.get(status)
    if event_type is None:
        return 0
    event_id = new_id("webhook_event")
    payload = event_payload(event_id, event_type, job_id, created_at=int(now))
    return enqueue_event(
        conn, project_ids=[project_id], event_type=event_type, event_id=event_id, payload=payload, now=now
    )


def enqueue_event(
    conn: Connection, *, project_ids: Sequence[str], event_type: str, event_id: str, payload: str, now: float
) -> int:
    """Write one delivery of an event per endpoint of `project_ids` subscribed to its type; return how many.

    Runs inside the caller's transaction. Each delivery has its own `webhook-id`.
    """
    count = 0
    for project_id in project_ids:
        endpoints = conn.run("webhook_endpoints_for_event", {"project_id": project_id, "event_type": event_type})
        for row in endpoints.fetchall():
            delivery = WebhookDeliveryRecord(
                id=new_id("webhook_delivery"),
                endpoint_id=row["id"],
                project_id=project_id,
                event_id=event_id,
                event_type=event_type,
                payload=payload,
                created_at=int(now),
                status=WebhookDeliveryStatus.PENDING,
                next_attempt_at=now,
            )
            conn.run("insert_webhook_delivery", to_params(delivery))
            count += 1
    return count

"""Webhook endpoints and the outbox of deliveries, in the SQL metadata store.

Deliveries are written by `storage/outbox.py` inside the transactions that change a job; here they are listed,
leased to a sender for one attempt, and finished. A lease (`lease_owner`, `lease_expires_at`) makes a delivery
one sender's at a time across API processes: PostgreSQL claims with `FOR UPDATE SKIP LOCKED`, SQLite inside
`BEGIN IMMEDIATE`. A sender that dies mid-attempt leaves a lease that expires; another sender then retries the
delivery with the same `webhook-id`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.storage import audit
from tunewright.storage.audit import record_audit
from tunewright.storage.errors import LimitExceeded, NotFound
from tunewright.storage.metadata_base import SQLStoreBase
from tunewright.storage.outbox import signing_secrets
from tunewright.storage.records import (
    ClaimedDelivery,
    Page,
    WebhookDeliveryRecord,
    WebhookEndpointRecord,
)
from tunewright.storage.rows import encode_columns, from_row, to_params

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tunewright.storage.audit import AuditActor
    from tunewright.storage.db import Connection

_ENDPOINT_CHANGES = frozenset(
    {"name", "url", "event_types", "secret", "previous_secret", "previous_secret_expires_at", "updated_at"}
)


class WebhooksMixin(SQLStoreBase):
    """`MetadataStore` methods for webhook endpoints and their deliveries."""

    def create_webhook_endpoint(
        self, record: WebhookEndpointRecord, *, max_per_project: int, actor: AuditActor | None = None
    ) -> None:
        """Insert an endpoint unless its project already has `max_per_project` (`webhook_endpoint.created`).

        Raises:
            LimitExceeded: the project has `max_per_project` endpoints already.
        """
        data = {"name": record.name, "url": record.url, "event_types": record.event_types}
        with self.database.transaction(immediate=True) as conn:
            count = conn.run("count_webhook_endpoints", {"project_id": record.project_id}).fetchone()
            if int(count["n"]) >= max_per_project:
                raise LimitExceeded(f"project {record.project_id} has {count['n']} webhook endpoints")
            conn.run("insert_webhook_endpoint", to_params(record))
            details = {"id": record.id, "data": data}
            record_audit(conn, actor, audit.WEBHOOK_ENDPOINT_CREATED, project_id=record.project_id, details=details)

    def get_webhook_endpoint(self, endpoint_id: str, *, project_id: str) -> WebhookEndpointRecord:
        """Return an endpoint of this project. `NotFound`."""
        with self.database.reading() as conn:
            row = conn.run("get_webhook_endpoint", {"id": endpoint_id, "project_id": project_id}).fetchone()
        if row is None:
            raise NotFound(endpoint_id)
        return from_row(WebhookEndpointRecord, row)

    def list_webhook_endpoints(self, *, project_id: str, after: str | None, limit: int) -> Page[WebhookEndpointRecord]:
        """Endpoints of a project, newest first."""
        with self.database.reading() as conn:
            return self._page(
                conn,
                WebhookEndpointRecord,
                query="list_webhook_endpoints",
                cursor_query="webhook_endpoint_cursor",
                scope={"project_id": project_id},
                after=after,
                limit=limit,
                order="desc",
            )

    def update_webhook_endpoint(
        self, endpoint_id: str, *, project_id: str, actor: AuditActor | None = None, **changes: Any
    ) -> WebhookEndpointRecord:
        """Set an endpoint's name, url, event types or secrets; return the new row. `NotFound`.

        Audited as `webhook_endpoint.secret_rotated` when a new secret is set, else `webhook_endpoint.updated`
        with the fields asked for (never a secret).
        """
        with self.database.transaction(immediate=True) as conn:
            record = self._update(
                conn,
                WebhookEndpointRecord,
                sql=self.database.query("update_webhook_endpoint"),
                where={"id": endpoint_id, "project_id": project_id},
                changes=changes,
                columns=_ENDPOINT_CHANGES,
            )
            if record is not None:
                _audit_endpoint_change(conn, actor, record, changes)
        if record is None:
            raise NotFound(endpoint_id)
        return record

    def delete_webhook_endpoint(
        self, endpoint_id: str, *, project_id: str, actor: AuditActor | None = None
    ) -> WebhookEndpointRecord:
        """Delete an endpoint and, with it, its deliveries (sent or not; `webhook_endpoint.deleted`). `NotFound`."""
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("delete_webhook_endpoint", {"id": endpoint_id, "project_id": project_id}).fetchone()
            if row is not None:
                details = {"id": endpoint_id}
                record_audit(conn, actor, audit.WEBHOOK_ENDPOINT_DELETED, project_id=project_id, details=details)
        if row is None:
            raise NotFound(endpoint_id)
        return from_row(WebhookEndpointRecord, row)

    def list_webhook_deliveries(
        self, endpoint_id: str, *, project_id: str, status: str | None, after: str | None, limit: int
    ) -> Page[WebhookDeliveryRecord]:
        """Deliveries to an endpoint of this project, newest first, optionally of one status. `NotFound`."""
        with self.database.reading() as conn:
            if conn.run("get_webhook_endpoint", {"id": endpoint_id, "project_id": project_id}).fetchone() is None:
                raise NotFound(endpoint_id)
            return self._page(
                conn,
                WebhookDeliveryRecord,
                query="list_webhook_deliveries",
                cursor_query="webhook_delivery_cursor",
                scope={"endpoint_id": endpoint_id, "project_id": project_id},
                filters={"status": status},
                after=after,
                limit=limit,
                order="desc",
            )

    def claim_webhook_deliveries(self, owner: str, *, now: float, lease_s: float, limit: int) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries to `owner` (unique per call) for one attempt each, oldest due first.

        Each comes with its endpoint's URL and the secrets that sign it at `now`: the current one, and the
        previous one while a rotation keeps it.
        """
        params = {"owner": owner, "now": now, "expires_at": now + lease_s, "limit": limit}
        with self.database.reading() as conn:  # the common case, nothing due, takes no write lock
            if conn.run("webhook_due", {"now": now}).fetchone() is None:
                return []
        with self.database.transaction(immediate=True) as conn:
            rows = conn.run("webhook_claim", params).fetchall()
            if not rows:
                return []
            deliveries = [from_row(WebhookDeliveryRecord, row) for row in rows]
            endpoints = _endpoints(conn, {d.endpoint_id for d in deliveries})
        claimed = [
            ClaimedDelivery(
                delivery=delivery,
                url=endpoints[delivery.endpoint_id]["url"],
                secrets=_signing_secrets(endpoints[delivery.endpoint_id], now=now),
                owner=owner,
            )
            for delivery in deliveries
            if delivery.endpoint_id in endpoints
        ]
        claimed.sort(key=lambda c: (c.delivery.next_attempt_at or 0.0, c.delivery.id))
        return claimed

    def finish_webhook_attempt(
        self,
        claimed: ClaimedDelivery,
        *,
        status: str,
        next_attempt_at: float | None,
        finished_at: int | None,
        attempt: dict[str, Any],
        keep_attempts: int,
    ) -> bool:
        """Record one attempt of a leased delivery and its new status, ending the lease.

        False, and nothing written, if the lease was lost (it expired and another sender took the delivery) or
        the delivery is gone (its endpoint was deleted). `attempt_log` keeps the latest `keep_attempts`.
        """
        log = [*claimed.delivery.attempt_log, attempt][-keep_attempts:]
        params = {
            "id": claimed.delivery.id,
            "owner": claimed.owner,
            "status": status,
            "next_attempt_at": next_attempt_at,
            "finished_at": finished_at,
            **encode_columns(WebhookDeliveryRecord, {"attempt_log": log}),
        }
        with self.database.transaction(immediate=True) as conn:
            return conn.run("finish_webhook_attempt", params).fetchone() is not None

    def release_webhook_delivery(self, claimed: ClaimedDelivery) -> None:
        """End a lease without recording an attempt (a sender stopping mid-attempt): the delivery is due again."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("release_webhook_delivery", {"id": claimed.delivery.id, "owner": claimed.owner})

    def count_webhook_backlog(self) -> int:
        """Deliveries of every project not yet acknowledged nor given up on (for /metrics)."""
        with self.database.reading() as conn:
            row = conn.run("webhook_backlog", {}).fetchone()
        return int(row["n"])

    def delete_finished_webhook_deliveries(self, *, finished_before: int, limit: int) -> int:
        """Delete deliveries acknowledged or given up on before `finished_before`; return how many (the sweeper)."""
        params = {"finished_before": finished_before, "limit": limit}
        with self.database.transaction(immediate=True) as conn:
            return len(conn.run("delete_finished_webhook_deliveries", params).fetchall())


def _endpoints(conn: Connection, endpoint_ids: set[str]) -> dict[str, Mapping[str, Any]]:
    """The URL and secrets of each endpoint in `endpoint_ids`, by id (a deleted one is absent)."""
    params = {f"id_{i}": endpoint_id for i, endpoint_id in enumerate(sorted(endpoint_ids))}
    placeholders = ", ".join(f":{name}" for name in params)
    sql = conn.database.query("webhook_claimed_endpoints").replace("{ids}", placeholders)
    return {row["id"]: row for row in conn.execute(sql, params).fetchall()}


def _signing_secrets(endpoint: Mapping[str, Any], *, now: float) -> tuple[str, ...]:
    """The secrets that sign an attempt to `endpoint` (a row) at `now`."""
    return signing_secrets(
        endpoint["secret"], endpoint["previous_secret"], endpoint["previous_secret_expires_at"], now=now
    )


def _audit_endpoint_change(
    conn: Connection, actor: AuditActor | None, record: WebhookEndpointRecord, changes: Mapping[str, Any]
) -> None:
    """Record a secret rotation (and whether the old secret keeps signing), or the fields an update asked for."""
    if "secret" in changes:
        data = {"keep_old_secret_active_for_24_hours": changes.get("previous_secret") is not None}
        details = {"id": record.id, "data": data}
        record_audit(conn, actor, audit.WEBHOOK_ENDPOINT_SECRET_ROTATED, project_id=record.project_id, details=details)
        return
    requested = {key: changes[key] for key in ("name", "url", "event_types") if key in changes}
    details = {"id": record.id, "changes_requested": requested}
    record_audit(conn, actor, audit.WEBHOOK_ENDPOINT_UPDATED, project_id=record.project_id, details=details)

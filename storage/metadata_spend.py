"""Spend limits, spend alerts and measured training throughput in the SQL metadata store.

A limit is one row per project (`spend_limits`) or per organization (`organization_spend_limits`, the limit on
all its projects' spend together); `put_spend_limit` creates or replaces either. An alert belongs to a project,
or to its organization when `project_id` is None. `fire_spend_alert` marks an alert fired for a month and writes its
webhook deliveries (storage/outbox.py) in one transaction: of several API processes that see the same alert
crossed, exactly one sends it. Throughput rows (one per job that succeeded) give the cost estimate its duration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.storage import audit
from tunewright.storage.audit import record_audit
from tunewright.storage.errors import NotFound
from tunewright.storage.metadata_base import SQLStoreBase
from tunewright.storage.outbox import enqueue_event
from tunewright.storage.records import SpendAlertRecord, SpendLimitRecord, ThroughputRecord
from tunewright.storage.rows import encode_columns, from_row, to_params

if TYPE_CHECKING:
    from tunewright.storage.audit import AuditActor
    from tunewright.storage.db import Connection


class SpendMixin(SQLStoreBase):
    """`MetadataStore` methods for spend limits and alerts."""

    def get_spend_limit(self, project_id: str) -> SpendLimitRecord:
        """Return a project's spend limit. `NotFound` when it has none."""
        return self._get_limit("get_spend_limit", {"project_id": project_id})

    def get_organization_spend_limit(self, organization_id: str) -> SpendLimitRecord:
        """Return an organization's own spend limit (on all its projects' spend). `NotFound` when it has none."""
        return self._get_limit("get_organization_spend_limit", {"organization_id": organization_id})

    def _get_limit(self, query: str, params: dict[str, str]) -> SpendLimitRecord:
        with self.database.reading() as conn:
            row = conn.run(query, params).fetchone()
        if row is None:
            raise NotFound(next(iter(params.values())))
        return SpendLimitRecord(**row)

    def put_spend_limit(self, record: SpendLimitRecord, *, actor: AuditActor | None = None) -> SpendLimitRecord:
        """Create or replace a project's spend limit (the organization's when `record.project_id` is None).

        Keeps its `created_at`; returns the stored row. Audited as `spend_limit.updated` (Tunewright's type), its
        `id` the project or the organization.
        """
        query = "put_spend_limit" if record.project_id is not None else "put_organization_spend_limit"
        with self.database.transaction(immediate=True) as conn:
            row = conn.run(query, to_params(record)).fetchone()
            details = {"id": record.project_id or record.organization_id, "changes_requested": _limit_payload(record)}
            record_audit(
                conn,
                actor,
                audit.SPEND_LIMIT_UPDATED,
                project_id=record.project_id,
                organization_id=record.organization_id,
                details=details,
            )
        return SpendLimitRecord(**row)

    def delete_spend_limit(self, project_id: str, *, actor: AuditActor | None = None) -> bool:
        """Remove a project's spend limit; False when it had none (`spend_limit.deleted` when it had)."""
        return self._delete_limit("delete_spend_limit", actor, project_id=project_id)

    def delete_organization_spend_limit(self, organization_id: str, *, actor: AuditActor | None = None) -> bool:
        """Remove an organization's own spend limit; False when it had none (`spend_limit.deleted` when it had)."""
        return self._delete_limit("delete_organization_spend_limit", actor, organization_id=organization_id)

    def _delete_limit(
        self, query: str, actor: AuditActor | None, *, project_id: str | None = None, organization_id: str | None = None
    ) -> bool:
        params = {"project_id": project_id} if project_id is not None else {"organization_id": organization_id}
        with self.database.transaction(immediate=True) as conn:
            gone = conn.run(query, params).fetchone() is not None
            if gone:
                record_audit(
                    conn,
                    actor,
                    audit.SPEND_LIMIT_DELETED,
                    project_id=project_id,
                    organization_id=organization_id,
                    details={"id": project_id or organization_id},
                )
            return gone

    def insert_spend_alert(self, record: SpendAlertRecord, *, actor: AuditActor | None = None) -> None:
        """Insert a spend alert (`spend_alert.created`)."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_spend_alert", to_params(record))
            _audit_alert(conn, actor, audit.SPEND_ALERT_CREATED, record)

    def list_spend_alerts(self, *, organization_id: str, project_id: str | None) -> list[SpendAlertRecord]:
        """A project's alerts (or the organization's own when `project_id` is None), oldest first."""
        query = "list_organization_spend_alerts" if project_id is None else "list_project_spend_alerts"
        with self.database.reading() as conn:
            rows = conn.run(query, {"organization_id": organization_id, "project_id": project_id}).fetchall()
        return [from_row(SpendAlertRecord, row) for row in rows]

    def list_due_spend_alerts(self, *, month: int) -> list[SpendAlertRecord]:
        """Every organization's alerts that have not fired for `month`, oldest first."""
        with self.database.reading() as conn:
            rows = conn.run("list_due_spend_alerts", {"month": month}).fetchall()
        return [from_row(SpendAlertRecord, row) for row in rows]

    def update_spend_alert(self, record: SpendAlertRecord, *, actor: AuditActor | None = None) -> SpendAlertRecord:
        """Replace an alert's threshold and channel; a new threshold may fire again this month. `NotFound`.

        Audited as `spend_alert.updated`.
        """
        params = encode_columns(SpendAlertRecord, _changes(record))
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("update_spend_alert", params).fetchone()
            if row is not None:
                _audit_alert(conn, actor, audit.SPEND_ALERT_UPDATED, record)
        if row is None:
            raise NotFound(record.id)
        return from_row(SpendAlertRecord, row)

    def delete_spend_alert(
        self, alert_id: str, *, organization_id: str, project_id: str | None = None, actor: AuditActor | None = None
    ) -> None:
        """Delete an alert (of `project_id`, or the organization's own; `spend_alert.deleted`). `NotFound`."""
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("delete_spend_alert", {"id": alert_id, "organization_id": organization_id}).fetchone()
            if row is not None:
                details = {"id": alert_id}
                record_audit(
                    conn,
                    actor,
                    audit.SPEND_ALERT_DELETED,
                    details=details,
                    project_id=project_id,
                    organization_id=organization_id,
                )
        if row is None:
            raise NotFound(alert_id)

    def fire_spend_alert(
        self, alert: SpendAlertRecord, *, month: int, event_type: str, event_id: str, payload: str, now: float
    ) -> int | None:
        """Mark `alert` fired for `month` and write its webhook deliveries, in one transaction.

        The deliveries go to the alert's project's endpoints subscribed to `event_type`, or to those of every
        project of its organization for an organization alert. Returns how many were written; None when the
        alert had already fired this month (or is gone).
        """
        with self.database.transaction(immediate=True) as conn:
            if conn.run("mark_spend_alert_fired", {"id": alert.id, "month": month}).fetchone() is None:
                return None
            if alert.project_id is not None:
                project_ids = [alert.project_id]
            else:
                rows = conn.run("organization_project_ids", {"organization_id": alert.organization_id}).fetchall()
                project_ids = [row["id"] for row in rows]
            return enqueue_event(
                conn, project_ids=project_ids, event_type=event_type, event_id=event_id, payload=payload, now=now
            )

    def record_throughput(self, record: ThroughputRecord) -> None:
        """Keep a job's measured throughput (once per job: a second call does nothing)."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_training_throughput", to_params(record))

    def measured_throughput(self, base_model: str, *, jobs: int) -> tuple[int, float, int]:
        """`(tokens, seconds, jobs)` summed over the latest `jobs` rows of a base model (zeros without any)."""
        with self.database.reading() as conn:
            row = conn.run("recent_training_throughput", {"base_model": base_model, "jobs": jobs}).fetchone()
        return int(row["tokens"]), float(row["seconds"]), int(row["jobs"])


def _changes(record: SpendAlertRecord) -> dict[str, Any]:
    fields = ("id", "organization_id", "threshold_amount", "currency", "period", "notification_channel", "updated_at")
    return {name: getattr(record, name) for name in fields}


def _limit_payload(record: SpendLimitRecord) -> dict[str, Any]:
    """What an admin asked of a spend limit, as the audit log shows it."""
    return {"threshold_amount": record.threshold_amount, "currency": record.currency, "interval": record.period}


def _audit_alert(conn: Connection, actor: AuditActor | None, event_type: str, record: SpendAlertRecord) -> None:
    """One `spend_alert.*` entry for `record` (a project's alert, or its organization's own)."""
    details = {"id": record.id, "data": _limit_payload(record)}
    record_audit(
        conn,
        actor,
        event_type,
        details=details,
        project_id=record.project_id,
        organization_id=record.organization_id,
    )

"""Per-project rate limits of the SQL metadata store: what admins set for one base model of one project."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunewright.storage import audit
from tunewright.storage.audit import record_audit
from tunewright.storage.metadata_base import SQLStoreBase, now
from tunewright.storage.records import RateLimitRecord
from tunewright.storage.rows import from_row

if TYPE_CHECKING:
    from tunewright.storage.audit import AuditActor


class LimitsMixin(SQLStoreBase):
    """`MetadataStore` methods for rate limits."""

    def list_rate_limits(self, *, project_id: str) -> list[RateLimitRecord]:
        """The limits set for the project's models, by model."""
        with self.database.reading() as conn:
            rows = conn.run("list_rate_limits", {"project_id": project_id}).fetchall()
        return [from_row(RateLimitRecord, row) for row in rows]

    def set_rate_limit(
        self,
        *,
        project_id: str,
        model: str,
        max_requests_per_1_minute: int | None = None,
        max_tokens_per_1_minute: int | None = None,
        max_requests_per_1_day: int | None = None,
        actor: AuditActor | None = None,
    ) -> RateLimitRecord:
        """Upsert one model's limits; a None keeps the value the row held (or the default).

        Audited as `rate_limit.updated` (resource `rl-<model>`, the fields sent as `changes_requested`).
        """
        params = {
            "project_id": project_id,
            "model": model,
            "max_requests_per_1_minute": max_requests_per_1_minute,
            "max_tokens_per_1_minute": max_tokens_per_1_minute,
            "max_requests_per_1_day": max_requests_per_1_day,
            "updated_at": now(),
        }
        changes = {
            name: value
            for name, value in (
                ("max_requests_per_1_minute", max_requests_per_1_minute),
                ("max_tokens_per_1_minute", max_tokens_per_1_minute),
                ("max_requests_per_1_day", max_requests_per_1_day),
            )
            if value is not None
        }
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("upsert_rate_limit", params).fetchone()
            details = {"id": f"rl-{model}", "changes_requested": changes}
            record_audit(conn, actor, audit.RATE_LIMIT_UPDATED, project_id=project_id, details=details)
        return from_row(RateLimitRecord, row)

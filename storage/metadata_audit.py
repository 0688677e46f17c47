"""The audit log's reads in the SQL metadata store (entries are written by `storage/audit.py:record_audit`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.storage.metadata_base import SQLStoreBase
from tunewright.storage.records import AuditLogRecord, Page

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tunewright.storage.audit import AuditLogFilter


class AuditMixin(SQLStoreBase):
    """`MetadataStore` methods for the audit log."""

    def list_audit_logs(
        self,
        *,
        organization_id: str | None,
        filters: AuditLogFilter,
        after: str | None,
        before: str | None,
        limit: int,
    ) -> Page[AuditLogRecord]:
        """Entries of an organization (`None`: of every one) that pass `filters`, newest first.

        `after` pages towards older entries, `before` towards newer ones (the entries just newer than it,
        still newest first); give one of them at most. `InvalidCursor` when the cursor is not an entry of the
        organization.
        """
        where, params = filter_clauses(filters)
        page_of = {
            "query": "list_audit_logs",
            "cursor_query": "audit_log_cursor",
            "scope": {"organization_id": organization_id},
            "filters": params,
            "where": where,
            "limit": limit,
        }
        with self.database.reading() as conn:
            if before is None:
                return self._page(conn, AuditLogRecord, after=after, order="desc", **page_of)
            page = self._page(conn, AuditLogRecord, after=before, order="asc", **page_of)
        return Page(items=page.items[::-1], has_more=page.has_more)


def filter_clauses(filters: AuditLogFilter) -> tuple[str, dict[str, Any]]:
    """Return the `AND …` clauses of `filters` and their parameters (`:f<n>` placeholders, one per value)."""
    params: dict[str, Any] = {}
    clauses: list[str] = []

    def among(column: str, values: Sequence[str]) -> str:
        if not values:
            return "1 = 0"
        names = []
        for value in values:
            name = f"f{len(params)}"
            params[name] = value
            names.append(f":{name}")
        return f"{column} IN ({', '.join(names)})"

    for column, values in (
        ("type", filters.event_types),
        ("project_id", filters.project_ids),
        ("resource_id", filters.resource_ids),
    ):
        if values is not None:
            clauses.append(among(column, values))
    for match in filters.actors:
        options = [among("actor_key_id", match.ids), among("actor_service_account_id", match.ids)]
        options.append(among("actor_kind", match.kinds))
        clauses.append("(" + " OR ".join(options) + ")")
    if filters.effective_min is not None:
        params["effective_min"] = filters.effective_min
        clauses.append("effective_at >= :effective_min")
    if filters.effective_max is not None:
        params["effective_max"] = filters.effective_max
        clauses.append("effective_at <= :effective_max")
    return "".join(f"AND {clause}\n  " for clause in clauses), params

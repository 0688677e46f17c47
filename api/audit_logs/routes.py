"""HTTP route of /v1/organization/audit_logs: decode, one service call, wire page. Admin keys only."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.params import FromQuery

from tunewright.api.audit_logs import service
from tunewright.api.auth import Caller, require_admin
from tunewright.api.dependencies import AppStores
from tunewright.api.pagination import check_limit
from tunewright.api.schemas import CursorPageWithIds

MAX_LIMIT = 100


class AuditLogsController(Controller):
    """`/v1/organization/audit_logs`: changes made in the caller's organization, newest first."""

    path = "/v1/organization/audit_logs"
    guards = [require_admin]
    tags = ["Audit Logs"]

    @get("/", sync_to_thread=True)
    def list_audit_logs(
        self,
        request: Request[Any, Any, Any],
        stores: AppStores,
        principal: Caller,
        limit: FromQuery[int] = 20,
        after: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
        tenant_only: FromQuery[bool] = False,
    ) -> CursorPageWithIds[dict[str, Any]]:
        """List audit log entries; `event_types[]`, `project_ids[]`, `actor_ids[]`, … filter (see the service)."""
        return service.list_audit_logs(
            stores,
            principal,
            request.query_params,
            after=after,
            before=before,
            limit=check_limit(limit, maximum=MAX_LIMIT),
            tenant_only=tenant_only,
        )


ROUTES = [AuditLogsController]

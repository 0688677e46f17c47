"""HTTP routes of spend limits and spend alerts: decode, one service call, wire Struct. Admin keys only.

`/v1/organization/projects/{project_id}/spend_limit` (GET, POST, DELETE),
`/v1/organization/projects/{project_id}/spend_alerts[/{alert_id}]` and `/v1/organization/spend_alerts[/{alert_id}]`
(list, create, retrieve, update, delete), as `client.admin.organization[.projects].spend_limit/spend_alerts` call
them.
"""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from tunewright.api.auth import Caller, require_admin
from tunewright.api.dependencies import AppSettings, AppStores
from tunewright.api.spend import service
from tunewright.api.spend.schemas import (
    CreateSpendAlertBody,
    ProjectSpendLimitDeletedResource,
    ProjectSpendLimitResource,
    SpendAlert,
    SpendAlertDeleted,
    SpendAlertList,
    UpdateProjectSpendLimitBody,
)


class ProjectSpendLimitController(Controller):
    """`/v1/organization/projects/{project_id}/spend_limit`."""

    path = "/v1/organization/projects/{project_id:str}/spend_limit"
    guards = [require_admin]
    tags = ["Spend limits"]

    @get("/", sync_to_thread=True)
    def retrieve_spend_limit(
        self, stores: AppStores, settings: AppSettings, principal: Caller, project_id: FromPath[str]
    ) -> ProjectSpendLimitResource:
        """Return the project's hard spend limit."""
        return service.get_spend_limit(stores, settings, principal, project_id)

    @post("/", status_code=200, sync_to_thread=True)
    def update_spend_limit(
        self,
        stores: AppStores,
        settings: AppSettings,
        principal: Caller,
        project_id: FromPath[str],
        data: JSONBody[UpdateProjectSpendLimitBody],
    ) -> ProjectSpendLimitResource:
        """Create or replace the project's hard spend limit."""
        return service.put_spend_limit(stores, settings, principal, project_id, data)

    @delete("/", status_code=200, sync_to_thread=True)
    def delete_spend_limit(
        self, stores: AppStores, principal: Caller, project_id: FromPath[str]
    ) -> ProjectSpendLimitDeletedResource:
        """Remove the project's hard spend limit."""
        service.delete_spend_limit(stores, principal, project_id)
        return ProjectSpendLimitDeletedResource()


class ProjectSpendAlertsController(Controller):
    """`/v1/organization/projects/{project_id}/spend_alerts`."""

    path = "/v1/organization/projects/{project_id:str}/spend_alerts"
    guards = [require_admin]
    tags = ["Spend alerts"]

    @get("/", sync_to_thread=True)
    def list_alerts(
        self,
        stores: AppStores,
        principal: Caller,
        project_id: FromPath[str],
        limit: FromQuery[int] = 20,
        order: FromQuery[str] = "asc",
        after: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
    ) -> SpendAlertList:
        """List the project's spend alerts."""
        return service.list_alerts(stores, principal, project_id, limit=limit, order=order, after=after, before=before)

    @post("/", status_code=200, sync_to_thread=True)
    def create_alert(
        self, stores: AppStores, principal: Caller, project_id: FromPath[str], data: JSONBody[CreateSpendAlertBody]
    ) -> SpendAlert:
        """Create a spend alert on the project."""
        return service.create_alert(stores, principal, project_id, data)

    @get("/{alert_id:str}", sync_to_thread=True)
    def retrieve_alert(
        self, stores: AppStores, principal: Caller, project_id: FromPath[str], alert_id: FromPath[str]
    ) -> SpendAlert:
        """Return one of the project's spend alerts."""
        return service.get_alert(stores, principal, project_id, alert_id)

    @post("/{alert_id:str}", status_code=200, sync_to_thread=True)
    def update_alert(
        self,
        stores: AppStores,
        principal: Caller,
        project_id: FromPath[str],
        alert_id: FromPath[str],
        data: JSONBody[CreateSpendAlertBody],
    ) -> SpendAlert:
        """Replace one of the project's spend alerts."""
        return service.update_alert(stores, principal, project_id, alert_id, data)

    @delete("/{alert_id:str}", status_code=200, sync_to_thread=True)
    def delete_alert(
        self, stores: AppStores, principal: Caller, project_id: FromPath[str], alert_id: FromPath[str]
    ) -> SpendAlertDeleted:
        """Delete one of the project's spend alerts."""
        return service.delete_alert(stores, principal, project_id, alert_id)


class OrganizationSpendAlertsController(Controller):
    """`/v1/organization/spend_alerts`: the organization's own alerts (its whole spend)."""

    path = "/v1/organization/spend_alerts"
    guards = [require_admin]
    tags = ["Spend alerts"]

    @get("/", sync_to_thread=True)
    def list_alerts(
        self,
        stores: AppStores,
        principal: Caller,
        limit: FromQuery[int] = 20,
        order: FromQuery[str] = "asc",
        after: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
    ) -> SpendAlertList:
        """List the organization's spend alerts."""
        return service.list_alerts(stores, principal, None, limit=limit, order=order, after=after, before=before)

    @post("/", status_code=200, sync_to_thread=True)
    def create_alert(self, stores: AppStores, principal: Caller, data: JSONBody[CreateSpendAlertBody]) -> SpendAlert:
        """Create a spend alert on the organization's spend."""
        return service.create_alert(stores, principal, None, data)

    @get("/{alert_id:str}", sync_to_thread=True)
    def retrieve_alert(self, stores: AppStores, principal: Caller, alert_id: FromPath[str]) -> SpendAlert:
        """Return one of the organization's spend alerts."""
        return service.get_alert(stores, principal, None, alert_id)

    @post("/{alert_id:str}", status_code=200, sync_to_thread=True)
    def update_alert(
        self, stores: AppStores, principal: Caller, alert_id: FromPath[str], data: JSONBody[CreateSpendAlertBody]
    ) -> SpendAlert:
        """Replace one of the organization's spend alerts."""
        return service.update_alert(stores, principal, None, alert_id, data)

    @delete("/{alert_id:str}", status_code=200, sync_to_thread=True)
    def delete_alert(self, stores: AppStores, principal: Caller, alert_id: FromPath[str]) -> SpendAlertDeleted:
        """Delete one of the organization's spend alerts."""
        return service.delete_alert(stores, principal, None, alert_id)


ROUTES = [ProjectSpendLimitController, ProjectSpendAlertsController, OrganizationSpendAlertsController]

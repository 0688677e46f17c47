"""HTTP routes of spend limits and spend alerts: decode, one service call, wire Struct. Admin keys only.

`/v1/organization/projects/{project_id}/spend_limit` and `/v1/organization/spend_limit` (GET, POST, DELETE),
`/v1/organization/projects/{project_id}/spend_alerts[/{alert_id}]` and `/v1/organization/spend_alerts[/{alert_id}]`
(list, create, retrieve, update, delete), as `client.admin.organization[.projects].spend_limit/spend_alerts` call
them.

A project's routes and its organization's are one controller each (`SpendLimitController`,
`SpendAlertsController`) mounted on both paths (`mounted`): the `spend_scope` dependency is the project of the
path, or None for the organization's own.
"""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody

from tunewright.api.auth import Caller, require_admin
from tunewright.api.dependencies import AppSettings, AppStores
from tunewright.api.spend import service
from tunewright.api.spend.schemas import (
    CreateSpendAlertBody,
    SpendAlert,
    SpendAlertDeleted,
    SpendAlertList,
    SpendLimitDeletedResource,
    SpendLimitResource,
    UpdateSpendLimitBody,
)


def project_scope(project_id: FromPath[str]) -> str | None:
    """The `spend_scope` of a project's routes: the project of the path."""
    return project_id


def organization_scope() -> str | None:
    """The `spend_scope` of an organization's own routes: none below it."""
    return None


SpendScope = NamedDependency[str | None]
"""`spend_scope: SpendScope`: the project whose limit or alerts a route acts on; None for the organization's own."""
PROJECT_SCOPE = {"spend_scope": Provide(project_scope, sync_to_thread=False)}
ORGANIZATION_SCOPE = {"spend_scope": Provide(organization_scope, sync_to_thread=False)}


class SpendLimitController(Controller):
    """The hard spend limit of `spend_scope` (a project, or None: the organization)."""

    guards = [require_admin]
    tags = ["Spend limits"]

    @get("/", sync_to_thread=True)
    def retrieve_spend_limit(
        self, stores: AppStores, settings: AppSettings, principal: Caller, spend_scope: SpendScope
    ) -> SpendLimitResource:
        """Return the hard spend limit."""
        return service.get_spend_limit(stores, settings, principal, spend_scope)

    @post("/", status_code=200, sync_to_thread=True)
    def update_spend_limit(
        self,
        stores: AppStores,
        settings: AppSettings,
        principal: Caller,
        spend_scope: SpendScope,
        data: JSONBody[UpdateSpendLimitBody],
    ) -> SpendLimitResource:
        """Create or replace the hard spend limit."""
        return service.put_spend_limit(stores, settings, principal, spend_scope, data)

    @delete("/", status_code=200, sync_to_thread=True)
    def delete_spend_limit(
        self, stores: AppStores, principal: Caller, spend_scope: SpendScope
    ) -> SpendLimitDeletedResource:
        """Remove the hard spend limit."""
        return service.delete_spend_limit(stores, principal, spend_scope)


class SpendAlertsController(Controller):
    """The spend alerts of `spend_scope` (a project, or None: the organization's own, on its whole spend)."""

    guards = [require_admin]
    tags = ["Spend alerts"]

    @get("/", sync_to_thread=True)
    def list_alerts(
        self,
        stores: AppStores,
        principal: Caller,
        spend_scope: SpendScope,
        limit: FromQuery[int] = 20,
        order: FromQuery[str] = "asc",
        after: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
    ) -> SpendAlertList:
        """List the spend alerts."""
        return service.list_alerts(stores, principal, spend_scope, limit=limit, order=order, after=after, before=before)

    @post("/", status_code=200, sync_to_thread=True)
    def create_alert(
        self, stores: AppStores, principal: Caller, spend_scope: SpendScope, data: JSONBody[CreateSpendAlertBody]
    ) -> SpendAlert:
        """Create a spend alert."""
        return service.create_alert(stores, principal, spend_scope, data)

    @get("/{alert_id:str}", sync_to_thread=True)
    def retrieve_alert(
        self, stores: AppStores, principal: Caller, spend_scope: SpendScope, alert_id: FromPath[str]
    ) -> SpendAlert:
        """Return one spend alert."""
        return service.get_alert(stores, principal, spend_scope, alert_id)

    @post("/{alert_id:str}", status_code=200, sync_to_thread=True)
    def update_alert(
        self,
        stores: AppStores,
        principal: Caller,
        spend_scope: SpendScope,
        alert_id: FromPath[str],
        data: JSONBody[CreateSpendAlertBody],
    ) -> SpendAlert:
        """Replace one spend alert."""
        return service.update_alert(stores, principal, spend_scope, alert_id, data)

    @delete("/{alert_id:str}", status_code=200, sync_to_thread=True)
    def delete_alert(
        self, stores: AppStores, principal: Caller, spend_scope: SpendScope, alert_id: FromPath[str]
    ) -> SpendAlertDeleted:
        """Delete one spend alert."""
        return service.delete_alert(stores, principal, spend_scope, alert_id)


def mounted(controller: type[Controller], name: str) -> list[type[Controller]]:
    """`controller` at `/v1/organization/projects/{project_id}/<name>` and at `/v1/organization/<name>`."""
    project = {"path": f"/v1/organization/projects/{{project_id:str}}/{name}", "dependencies": PROJECT_SCOPE}
    organization = {"path": f"/v1/organization/{name}", "dependencies": ORGANIZATION_SCOPE}
    return [
        type(f"Project{controller.__name__}", (controller,), project),
        type(f"Organization{controller.__name__}", (controller,), organization),
    ]


ROUTES = [*mounted(SpendLimitController, "spend_limit"), *mounted(SpendAlertsController, "spend_alerts")]

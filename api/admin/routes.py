"""HTTP routes of /v1/organization/projects: decode, one service call, wire Struct. Admin keys only."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from tunewright.api.admin import service
from tunewright.api.admin.admin_keys import AdminApiKeysController
from tunewright.api.admin.schemas import (
    Project,
    ProjectApiKey,
    ProjectApiKeyDeleteResponse,
    ProjectApiKeyUpdateRequest,
    ProjectCreateRequest,
    ProjectServiceAccount,
    ProjectServiceAccountApiKey,
    ProjectServiceAccountCreateRequest,
    ProjectServiceAccountCreateResponse,
    ProjectServiceAccountDeleteResponse,
    ProjectServiceAccountUpdateRequest,
    ProjectUpdateRequest,
    ServiceAccountApiKeyCreateRequest,
)
from tunewright.api.auth import Caller, require_admin
from tunewright.api.dependencies import AppStores
from tunewright.api.pagination import check_choice, check_limit, edge_ids
from tunewright.api.schemas import CursorPageWithIds

MAX_LIMIT = 100


class ProjectsController(Controller):
    """`/v1/organization/projects`: projects of the caller's organization."""

    path = "/v1/organization/projects"
    guards = [require_admin]
    tags = ["Projects"]

    @get("/", sync_to_thread=True)
    def list_projects(
        self,
        stores: AppStores,
        principal: Caller,
        limit: FromQuery[int] = 20,
        after: FromQuery[str | None] = None,
        include_archived: FromQuery[bool] = False,
    ) -> CursorPageWithIds[Project]:
        """List the organization's projects, oldest first; archived ones only with `include_archived`."""
        page = service.list_projects(
            stores,
            principal,
            after=after,
            limit=check_limit(limit, maximum=MAX_LIMIT),
            include_archived=include_archived,
        )
        first_id, last_id = edge_ids(page.items)
        return CursorPageWithIds(
            data=[Project.from_record(r) for r in page.items],
            first_id=first_id,
            last_id=last_id,
            has_more=page.has_more,
        )

    @post("/", status_code=200, sync_to_thread=True)
    def create_project(self, stores: AppStores, principal: Caller, data: JSONBody[ProjectCreateRequest]) -> Project:
        """Create a project."""
        return Project.from_record(service.create_project(stores, principal, data))

    @get("/{project_id:str}", sync_to_thread=True)
    def retrieve_project(self, stores: AppStores, principal: Caller, project_id: FromPath[str]) -> Project:
        """Return one project."""
        return Project.from_record(service.get_project(stores, principal, project_id))

    @post("/{project_id:str}", status_code=200, sync_to_thread=True)
    def modify_project(
        self,
        stores: AppStores,
        principal: Caller,
        project_id: FromPath[str],
        data: JSONBody[ProjectUpdateRequest],
    ) -> Project:
        """Change a project's `name`, `external_key_id` or (an extension) `max_running_jobs`."""
        return Project.from_record(service.update_project(stores, principal, project_id, data))

    @post("/{project_id:str}/archive", status_code=200, sync_to_thread=True)
    def archive_project(self, stores: AppStores, principal: Caller, project_id: FromPath[str]) -> Project:
        """Archive a project; its keys stop working."""
        return Project.from_record(service.archive_project(stores, principal, project_id))


class ProjectApiKeysController(Controller):
    """`/v1/organization/projects/{project_id}/api_keys`."""

    path = "/v1/organization/projects/{project_id:str}/api_keys"
    guards = [require_admin]
    tags = ["Projects"]

    @get("/", sync_to_thread=True)
    def list_api_keys(
        self,
        stores: AppStores,
        principal: Caller,
        project_id: FromPath[str],
        limit: FromQuery[int] = 20,
        after: FromQuery[str | None] = None,
        owner_project_access: FromQuery[str | None] = None,
    ) -> CursorPageWithIds[ProjectApiKey]:
        """List the project's unrevoked keys, oldest first."""
        if owner_project_access is not None:
            check_choice(owner_project_access, service.ACCESS_FILTERS, param="owner_project_access")
        return service.list_api_keys(
            stores,
            principal,
            project_id,
            after=after,
            limit=check_limit(limit, maximum=MAX_LIMIT),
            owner_project_access=owner_project_access,
        )

    @get("/{api_key_id:str}", sync_to_thread=True)
    def retrieve_api_key(
        self, stores: AppStores, principal: Caller, project_id: FromPath[str], api_key_id: FromPath[str]
    ) -> ProjectApiKey:
        """Return one key (never its secret)."""
        return service.get_api_key(stores, principal, project_id, api_key_id)

    @post("/{api_key_id:str}", status_code=200, sync_to_thread=True)
    def update_api_key(
        self,
        stores: AppStores,
        principal: Caller,
        project_id: FromPath[str],
        api_key_id: FromPath[str],
        data: JSONBody[ProjectApiKeyUpdateRequest],
    ) -> ProjectApiKey:
        """Replace a key's scopes and/or set its expiry (seconds from now); the answer never holds its secret."""
        return service.update_api_key(stores, principal, project_id, api_key_id, data)

    @delete("/{api_key_id:str}", status_code=200, sync_to_thread=True)
    def delete_api_key(
        self, stores: AppStores, principal: Caller, project_id: FromPath[str], api_key_id: FromPath[str]
    ) -> ProjectApiKeyDeleteResponse:
        """Revoke a key; it stops working at once."""
        service.delete_api_key(stores, principal, project_id, api_key_id)
        return ProjectApiKeyDeleteResponse(id=api_key_id)


class ProjectServiceAccountsController(Controller):
    """`/v1/organization/projects/{project_id}/service_accounts`."""

    path = "/v1/organization/projects/{project_id:str}/service_accounts"
    guards = [require_admin]
    tags = ["Projects"]

    @post("/", status_code=200, sync_to_thread=True)
    def create_service_account(
        self,
        stores: AppStores,
        principal: Caller,
        project_id: FromPath[str],
        data: JSONBody[ProjectServiceAccountCreateRequest],
    ) -> ProjectServiceAccountCreateResponse:
        """Create a service account; the answer holds its key's secret, shown this once."""
        return service.create_service_account(stores, principal, project_id, data)

    @get("/", sync_to_thread=True)
    def list_service_accounts(
        self,
        stores: AppStores,
        principal: Caller,
        project_id: FromPath[str],
        limit: FromQuery[int] = 20,
        after: FromQuery[str | None] = None,
    ) -> CursorPageWithIds[ProjectServiceAccount]:
        """List the project's service accounts, oldest first."""
        page = service.list_service_accounts(
            stores, principal, project_id, after=after, limit=check_limit(limit, maximum=MAX_LIMIT)
        )
        first_id, last_id = edge_ids(page.items)
        return CursorPageWithIds(
            data=[ProjectServiceAccount.from_record(r) for r in page.items],
            first_id=first_id,
            last_id=last_id,
            has_more=page.has_more,
        )

    @get("/{service_account_id:str}", sync_to_thread=True)
    def retrieve_service_account(
        self,
        stores: AppStores,
        principal: Caller,
        project_id: FromPath[str],
        service_account_id: FromPath[str],
    ) -> ProjectServiceAccount:
        """Return one service account."""
        record = service.get_service_account(stores, principal, project_id, service_account_id)
        return ProjectServiceAccount.from_record(record)

    @post("/{service_account_id:str}", status_code=200, sync_to_thread=True)
    def update_service_account(
        self,
        stores: AppStores,
        principal: Caller,
        project_id: FromPath[str],
        service_account_id: FromPath[str],
        data: JSONBody[ProjectServiceAccountUpdateRequest],
    ) -> ProjectServiceAccount:
        """Change a service account's name or role."""
        record = service.update_service_account(stores, principal, project_id, service_account_id, data)
        return ProjectServiceAccount.from_record(record)

    @post("/{service_account_id:str}/api_keys", status_code=200, sync_to_thread=True)
    def create_service_account_api_key(
        self,
        stores: AppStores,
        principal: Caller,
        project_id: FromPath[str],
        service_account_id: FromPath[str],
        data: JSONBody[ServiceAccountApiKeyCreateRequest],
    ) -> ProjectServiceAccountApiKey:
        """Add a key to a service account; the answer holds its secret, shown this once."""
        return service.create_service_account_key(stores, principal, project_id, service_account_id, data)

    @delete("/{service_account_id:str}", status_code=200, sync_to_thread=True)
    def delete_service_account(
        self,
        stores: AppStores,
        principal: Caller,
        project_id: FromPath[str],
        service_account_id: FromPath[str],
    ) -> ProjectServiceAccountDeleteResponse:
        """Delete a service account and revoke its keys."""
        service.delete_service_account(stores, principal, project_id, service_account_id)
        return ProjectServiceAccountDeleteResponse(id=service_account_id)


ROUTES = [ProjectsController, ProjectApiKeysController, ProjectServiceAccountsController, AdminApiKeysController]

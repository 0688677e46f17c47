"""Rules of /v1/organization/projects: organization scoping, project lifecycle, keys and service accounts.

Scoping. An organization admin key acts on its own organization only; a project of another organization is
a 404 `project_not_found`, never a 403. The operator key (`settings.admin_key`) with an `OpenAI-Organization`
header acts as that organization's admin; an organization id that does not exist is 401
`invalid_organization` ("No such organization: …", as OpenAI's hosted API answers an unknown organization
header). Without the header it sees every organization: the project list holds every organization's projects
(each names its `organization_id`), and a route on one project acts in that project's organization. Only
creating a project needs an organization the request does not name otherwise: without the header it is 400
`param: "OpenAI-Organization"` (guessing one would put the project in the wrong tenant).

Archived projects (OpenAI: "archived projects cannot be used or updated"): reads still work; modify, creating
or deleting service accounts answer 400 `project_archived`; archiving again returns the project unchanged.
Their keys stop working in `api/auth.py`. Revoking a key of an archived project stays allowed.

Key owners. A key made by the operator (CLI, kind `project`) is owned by a synthetic user standing for the
operator: `id` `user-operator`, `name` `Tunewright operator`, `email` `operator@tunewright.invalid` (RFC 2606
reserved domain, so it can never reach anyone), `role` `owner`, `created_at` the organization's creation time.
A service account's key is owned by that account.

Service accounts. One made with `create_service_account_only` has role `none` and no key: it is no member of the
project, so keys added to it (`…/service_accounts/{id}/api_keys`) are listed with `owner_project_access:
inactive` and refused by `api/auth.py` until its role is set to `member` or `owner`.

Key policies. `…/api_keys/{id}` (POST) replaces a key's scopes (api/scopes.py) and/or sets its expiry relative to
the request; an expired key is refused by `api/auth.py` and cannot be updated. Both apply at once in the process
that made the change and within the key cache's half second everywhere else.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import msgspec
from msgspec import UNSET

from tunewright.api.admin.schemas import (
    OwnerProjectAccess,
    ProjectApiKey,
    ProjectApiKeyOwner,
    ProjectApiKeyOwnerServiceAccount,
    ProjectApiKeyOwnerUser,
    ProjectServiceAccountApiKey,
    ProjectServiceAccountCreateResponse,
    ProjectStatus,
)
from tunewright.api.errors import AuthenticationError, InvalidRequestError, NotFoundError, echo
from tunewright.api.pagination import edge_ids
from tunewright.api.schemas import CursorPageWithIds
from tunewright.api.scopes import check_scopes
from tunewright.storage.api_keys import mint_api_key
from tunewright.storage.errors import NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.records import ApiKeyRecord, ServiceAccountRecord

if TYPE_CHECKING:
    from tunewright.api.admin.schemas import (
        ProjectApiKeyUpdateRequest,
        ProjectCreateRequest,
        ProjectServiceAccountCreateRequest,
        ProjectServiceAccountUpdateRequest,
        ProjectUpdateRequest,
        ServiceAccountApiKeyCreateRequest,
    )
    from tunewright.api.auth import Principal
    from tunewright.storage.base import Stores
    from tunewright.storage.records import OrganizationRecord, Page, ProjectRecord

ORGANIZATION_HEADER = "OpenAI-Organization"
OPERATOR_USER_ID = "user-operator"
OPERATOR_USER_NAME = "Tunewright operator"
OPERATOR_USER_EMAIL = "operator@tunewright.invalid"
SERVICE_ACCOUNT_ROLE = "member"
NO_ROLE = "none"
SERVICE_ACCOUNT_KEY_NAME = "Secret Key"
ACCESS_FILTERS = ("active", "inactive", "any")


# --- scoping --------------------------------------------------------------------------------------------


def organization_of(stores: Stores, principal: Principal) -> OrganizationRecord:
    """Return the one organization an admin principal acts on, for a route that needs one.

    Raises:
        InvalidRequestError: the operator key was sent without an `OpenAI-Organization` header.
        AuthenticationError: the header names no organization.
    """
    scope = organization_scope(stores, principal)
    if scope is None:
        raise InvalidRequestError(
            f"This route acts on one organization: send the {ORGANIZATION_HEADER} header "
            "(openai SDK: `organization=`) with the organization's id along with the operator key.",
            param=ORGANIZATION_HEADER,
            code="missing_required_parameter",
        )
    return scope


def organization_scope(stores: Stores, principal: Principal) -> OrganizationRecord | None:
    """Return the organization an admin principal is limited to; None for the operator key without a header.

    Raises:
        AuthenticationError: the header names no organization.
    """
    if principal.organization_id is None:
        return None
    try:
        return stores.metadata.get_organization(principal.organization_id)
    except NotFound:
        raise AuthenticationError(
            f"No such organization: {echo(principal.organization_id)}.", code="invalid_organization"
        ) from None


def project_not_found(project_id: str) -> NotFoundError:
    """404 for a project id that is not in the caller's organization."""
    return NotFoundError(f"No such project: {echo(project_id)}", param="project_id", code="project_not_found")


def scoped_project(stores: Stores, principal: Principal, project_id: str) -> tuple[OrganizationRecord, ProjectRecord]:
    """Return the project `project_id` within the caller's scope and its organization, or raise 404."""
    scope = organization_scope(stores, principal)
    try:
        project = stores.metadata.get_project(project_id, organization_id=None if scope is None else scope.id)
        organization = scope or stores.metadata.get_organization(project.organization_id)
    except NotFound:
        raise project_not_found(project_id) from None
    return organization, project


def refuse_archived(project: ProjectRecord, action: str) -> None:
    """400 `project_archived`: archived projects cannot `action`."""
    if project.status == ProjectStatus.ARCHIVED:
        raise InvalidRequestError(
            f"Project {project.id} is archived: archived projects cannot {action}.",
            param="project_id",
            code="project_archived",
        )


def _check_name(name: str | None) -> str:
    if name is None or not name.strip():
        raise InvalidRequestError("Invalid 'name': must be a non-empty string.", param="name", code="invalid_value")
    return name


# --- projects -------------------------------------------------------------------------------------------


def list_projects(
    stores: Stores, principal: Principal, *, after: str | None, limit: int, include_archived: bool
) -> Page[ProjectRecord]:
    """Projects of the caller's organization (the operator key without a header: of every one), oldest first."""
    scope = organization_scope(stores, principal)
    return stores.metadata.list_projects(
        organization_id=None if scope is None else scope.id,
        after=after,
        limit=limit,
        include_archived=include_archived,
    )


def create_project(stores: Stores, principal: Principal, data: ProjectCreateRequest) -> ProjectRecord:
    """Create an active project; only the `GLOBAL` residency (or none) is accepted."""
    organization = organization_of(stores, principal)
    if data.residency not in (UNSET, None, "GLOBAL"):
        raise InvalidRequestError(
            f"Invalid 'residency': '{data.residency}' is not available; this server keeps data where it runs "
            "(only 'GLOBAL' is accepted).",
            param="residency",
            code="invalid_value",
        )
    external_key_id = None if data.external_key_id is UNSET else data.external_key_id
    return stores.metadata.create_project(
        organization_id=organization.id,
        name=_check_name(data.name),
        external_key_id=external_key_id,
        max_running_jobs=None if data.max_running_jobs is UNSET else data.max_running_jobs,
        actor=principal.actor,
    )


def get_project(stores: Stores, principal: Principal, project_id: str) -> ProjectRecord:
    """Return one project of the caller's organization."""
    return scoped_project(stores, principal, project_id)[1]


def update_project(stores: Stores, principal: Principal, project_id: str, data: ProjectUpdateRequest) -> ProjectRecord:
    """Change the fields sent (`name` may not be null; `external_key_id: null` clears it).

    `max_running_jobs: null` returns the project to the deployment's cap.
    """
    organization, project = scoped_project(stores, principal, project_id)
    refuse_archived(project, "be modified")
    changes: dict[str, Any] = {}
    if data.name is not UNSET:
        changes["name"] = _check_name(data.name)
    if data.external_key_id is not UNSET:
        changes["external_key_id"] = data.external_key_id
    if data.max_running_jobs is not UNSET:
        changes["max_running_jobs"] = data.max_running_jobs
    return _update(stores, principal, project, organization, changes)


def archive_project(stores: Stores, principal: Principal, project_id: str) -> ProjectRecord:
    """Archive a project (one way); its keys stop working. Archiving again changes nothing."""
    organization, project = scoped_project(stores, principal, project_id)
    if project.status == ProjectStatus.ARCHIVED:
        return project
    changes = {"status": str(ProjectStatus.ARCHIVED), "archived_at": int(time.time())}
    return _update(stores, principal, project, organization, changes)


def _update(
    stores: Stores,
    principal: Principal,
    project: ProjectRecord,
    organization: OrganizationRecord,
    changes: dict[str, Any],
) -> ProjectRecord:
    try:
        return stores.metadata.update_project(
            project.id, organization_id=organization.id, actor=principal.actor, **changes
        )
    except NotFound:
        raise project_not_found(project.id) from None


# --- project API keys -----------------------------------------------------------------------------------


def api_key_not_found(key_id: str) -> NotFoundError:
    """404 for a key id that is not an unrevoked key of the project."""
    return NotFoundError(f"No such API key: {echo(key_id)}", param="api_key_id", code="api_key_not_found")


class _Owners:
    """Resolves key owners for one response, loading each service account once."""

    def __init__(self, stores: Stores, organization: OrganizationRecord, project: ProjectRecord) -> None:
        self.stores = stores
        self.organization = organization
        self.project = project
        self.accounts: dict[str, ProjectApiKeyOwnerServiceAccount] = {}

    def access(self, key: ApiKeyRecord) -> OwnerProjectAccess:
        """`inactive` in an archived project or for a service account without a role in it."""
        if self.project.status == ProjectStatus.ARCHIVED:
            return OwnerProjectAccess.INACTIVE
        owner = self.owner(key)
        if (
            isinstance(owner.service_account, ProjectApiKeyOwnerServiceAccount)
            and owner.service_account.role == NO_ROLE
        ):
            return OwnerProjectAccess.INACTIVE
        return OwnerProjectAccess.ACTIVE

    def owner(self, key: ApiKeyRecord) -> ProjectApiKeyOwner:
        """The owner object of `key`."""
        account_id = key.service_account_id
        if account_id is None:
            user = ProjectApiKeyOwnerUser(
                id=OPERATOR_USER_ID,
                email=OPERATOR_USER_EMAIL,
                name=OPERATOR_USER_NAME,
                created_at=self.organization.created_at,
                role="owner",
            )
            return ProjectApiKeyOwner(type="user", user=user)
        if account_id not in self.accounts:
            self.accounts[account_id] = self._account(account_id, key)
        return ProjectApiKeyOwner(type="service_account", service_account=self.accounts[account_id])

    def _account(self, account_id: str, key: ApiKeyRecord) -> ProjectApiKeyOwnerServiceAccount:
        try:
            record = self.stores.metadata.get_service_account(account_id, project_id=self.project.id)
        except NotFound:  # deleted between the key read and now: its keys are revoked already
            return ProjectApiKeyOwnerServiceAccount(
                id=account_id, name=key.name, created_at=key.created_at, role=SERVICE_ACCOUNT_ROLE
            )
        return ProjectApiKeyOwnerServiceAccount.from_record(record)

    def view(self, key: ApiKeyRecord) -> ProjectApiKey:
        """The wire object of `key`."""
        return ProjectApiKey.from_record(key, owner=self.owner(key), access=self.access(key))


def list_api_keys(
    stores: Stores,
    principal: Principal,
    project_id: str,
    *,
    after: str | None,
    limit: int,
    owner_project_access: str | None,
) -> CursorPageWithIds[ProjectApiKey]:
    """Unrevoked keys of a project, oldest first; `owner_project_access` filters on each key's owner access.

    A filtered list reads on until it has `limit` keys or none are left, so a page is never empty while more
    match.
    """
    organization, project = scoped_project(stores, principal, project_id)
    owners = _Owners(stores, organization, project)
    wanted = None if owner_project_access in (None, "any") else owner_project_access
    items: list[ApiKeyRecord] = []
    has_more, cursor = True, after
    while has_more and len(items) < limit:
        page = stores.metadata.list_api_keys(
            organization_id=organization.id, project_id=project.id, after=cursor, limit=limit - len(items)
        )
        items.extend(k for k in page.items if wanted is None or owners.access(k) == wanted)
        has_more = page.has_more
        cursor = page.items[-1].id if page.items else None
    first_id, last_id = edge_ids(items)
    return CursorPageWithIds(
        data=[owners.view(k) for k in items],
        first_id=first_id,
        last_id=last_id,
        has_more=has_more,
    )


def _get_key(stores: Stores, organization: OrganizationRecord, project: ProjectRecord, key_id: str) -> ApiKeyRecord:
    try:
        return stores.metadata.get_api_key(key_id, organization_id=organization.id, project_id=project.id)
    except NotFound:
        raise api_key_not_found(key_id) from None


def get_api_key(stores: Stores, principal: Principal, project_id: str, key_id: str) -> ProjectApiKey:
    """Return one unrevoked key of the project."""
    organization, project = scoped_project(stores, principal, project_id)
    key = _get_key(stores, organization, project, key_id)
    return _Owners(stores, organization, project).view(key)


def update_api_key(
    stores: Stores, principal: Principal, project_id: str, key_id: str, data: ProjectApiKeyUpdateRequest
) -> ProjectApiKey:
    """Replace a key's scopes and/or set its expiry relative to now; both apply at once. Expired keys cannot be."""
    organization, project = scoped_project(stores, principal, project_id)
    if data.scopes is UNSET and data.expires_in_seconds is UNSET:
        raise InvalidRequestError(
            "Provide at least one of 'scopes' or 'expires_in_seconds'.",
            param="scopes",
            code="missing_required_parameter",
        )
    key = _get_key(stores, organization, project, key_id)
    now = int(time.time())
    if key.expires_at is not None and key.expires_at <= now:
        raise InvalidRequestError(
            f"API key {key_id} expired at {key.expires_at} (unix time); expired keys cannot be updated.",
            param="api_key_id",
            code="api_key_expired",
        )
    changes: dict[str, Any] = {}
    scopes, expires_at = key.scopes, key.expires_at
    if data.scopes is not UNSET:
        scopes = changes["scopes"] = check_scopes(data.scopes)
    if data.expires_in_seconds is not UNSET:
        expires_at = changes["expires_at"] = now + data.expires_in_seconds
    try:
        record = stores.metadata.update_api_key_policy(
            key_id,
            organization_id=organization.id,
            project_id=project.id,
            expires_at=expires_at,
            scopes=scopes,
            changes_requested=changes,
            actor=principal.actor,
        )
    except NotFound:
        raise api_key_not_found(key_id) from None
    return _Owners(stores, organization, project).view(record)


def delete_api_key(stores: Stores, principal: Principal, project_id: str, key_id: str) -> None:
    """Revoke a key at once. A service account's key is refused (as OpenAI): delete the account instead."""
    organization, project = scoped_project(stores, principal, project_id)
    key = _get_key(stores, organization, project, key_id)
    if key.service_account_id is not None:
        raise InvalidRequestError(
            f"API key {key_id} belongs to service account {key.service_account_id}; delete the service "
            "account to revoke it.",
            param="api_key_id",
            code="invalid_value",
        )
    try:
        stores.metadata.revoke_api_key(
            key_id, organization_id=organization.id, project_id=project.id, actor=principal.actor
        )
    except NotFound:
        raise api_key_not_found(key_id) from None


# --- service accounts -----------------------------------------------------------------------------------


def service_account_not_found(account_id: str) -> NotFoundError:
    """404 for a service account id that is not in the project."""
    return NotFoundError(
        f"No such service account: {echo(account_id)}", param="service_account_id", code="service_account_not_found"
    )


def create_service_account(
    stores: Stores, principal: Principal, project_id: str, data: ProjectServiceAccountCreateRequest
) -> ProjectServiceAccountCreateResponse:
    """Create a service account and its first key; the secret is returned here only, stored hashed."""
    organization, project = scoped_project(stores, principal, project_id)
    refuse_archived(project, "get new service accounts")
    now = int(time.time())
    account_only = bool(data.create_service_account_only)
    account = ServiceAccountRecord(
        id=new_id("service_account"),
        project_id=project.id,
        name=_check_name(data.name),
        role=NO_ROLE if account_only else SERVICE_ACCOUNT_ROLE,
        created_at=now,
    )
    key, secret = (None, None) if account_only else _mint_account_key(organization, account, now=now)
    stores.metadata.create_service_account(account, key, actor=principal.actor)
    return ProjectServiceAccountCreateResponse.from_record(account, key=key, secret=secret)


def _mint_account_key(
    organization: OrganizationRecord,
    account: ServiceAccountRecord,
    *,
    now: int,
    name: str = SERVICE_ACCOUNT_KEY_NAME,
    scopes: list[str] | None = None,
    expires_at: int | None = None,
) -> tuple[ApiKeyRecord, str]:
    key, secret = mint_api_key(
        organization_id=organization.id,
        project_id=account.project_id,
        name=name,
        kind="service_account",
        service_account_id=account.id,
        now=now,
    )
    return msgspec.structs.replace(key, scopes=scopes or None, expires_at=expires_at), secret


def create_service_account_key(
    stores: Stores, principal: Principal, project_id: str, account_id: str, data: ServiceAccountApiKeyCreateRequest
) -> ProjectServiceAccountApiKey:
    """Add a key to a service account; the answer holds its secret, shown this once."""
    organization, project = scoped_project(stores, principal, project_id)
    refuse_archived(project, "get new API keys")
    account = get_service_account(stores, principal, project_id, account_id)
    now = int(time.time())
    expires = None if data.expires_in_seconds in (UNSET, None) else now + cast("int", data.expires_in_seconds)
    key, secret = _mint_account_key(
        organization,
        account,
        now=now,
        name=SERVICE_ACCOUNT_KEY_NAME if data.name is UNSET else _check_name(data.name),
        scopes=None if data.scopes is UNSET else check_scopes(data.scopes),
        expires_at=expires,
    )
    try:
        stores.metadata.add_service_account_key(key, actor=principal.actor)
    except NotFound:
        raise service_account_not_found(account_id) from None
    return ProjectServiceAccountApiKey.from_record(key, secret=secret)


def update_service_account(
    stores: Stores, principal: Principal, project_id: str, account_id: str, data: ProjectServiceAccountUpdateRequest
) -> ServiceAccountRecord:
    """Change a service account's `name` and/or `role` (`member` or `owner`; `none` is only set on create)."""
    project = scoped_project(stores, principal, project_id)[1]
    refuse_archived(project, "have their service accounts changed")
    account = get_service_account(stores, principal, project_id, account_id)
    name = account.name if data.name is UNSET else _check_name(data.name)
    role = account.role if data.role is UNSET else data.role
    try:
        return stores.metadata.update_service_account(
            account_id, project_id=project.id, name=name, role=role, actor=principal.actor
        )
    except NotFound:
        raise service_account_not_found(account_id) from None


def list_service_accounts(
    stores: Stores, principal: Principal, project_id: str, *, after: str | None, limit: int
) -> Page[ServiceAccountRecord]:
    """Service accounts of a project, oldest first."""
    project = scoped_project(stores, principal, project_id)[1]
    return stores.metadata.list_service_accounts(project_id=project.id, after=after, limit=limit)


def get_service_account(stores: Stores, principal: Principal, project_id: str, account_id: str) -> ServiceAccountRecord:
    """Return one service account of the project."""
    project = scoped_project(stores, principal, project_id)[1]
    try:
        return stores.metadata.get_service_account(account_id, project_id=project.id)
    except NotFound:
        raise service_account_not_found(account_id) from None


def delete_service_account(stores: Stores, principal: Principal, project_id: str, account_id: str) -> None:
    """Delete a service account; its keys are revoked in the same transaction."""
    project = scoped_project(stores, principal, project_id)[1]
    refuse_archived(project, "have their service accounts changed")
    try:
        stores.metadata.delete_service_account(account_id, project_id=project.id, actor=principal.actor)
    except NotFound:
        raise service_account_not_found(account_id) from None

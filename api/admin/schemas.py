"""Wire objects of /v1/organization/projects: projects, their API keys and service accounts.

Field order, `object` strings and nullability follow OpenAI's OpenAPI document (`Project`,
`ProjectApiKey`, `ProjectServiceAccount`, … in openai/openai-openapi `openapi.yaml`). Each Struct repeats
`kw_only=True` because msgspec does not inherit it, and `object` (which has a default) often comes first.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Literal, cast

from msgspec import UNSET, Meta, UnsetType

from tunewright.api.schemas import Request, Response

if TYPE_CHECKING:
    from tunewright.storage.records import ApiKeyRecord, ProjectRecord, ServiceAccountRecord

# `PublicProjectResidency`: accepted on create for compatibility; Tunewright stores data where it runs.
ProjectResidency = Literal[
    "GLOBAL",
    "US_STORAGE_PROCESSING",
    "EU_STORAGE_PROCESSING",
    "JP_STORAGE",
    "KR_STORAGE",
    "CA_STORAGE",
    "SG_STORAGE",
    "IN_STORAGE",
    "AU_STORAGE",
    "GB_STORAGE",
    "AE_STORAGE",
    "AE_STORAGE_PROCESSING",
]


ServiceAccountRole = Literal["owner", "member", "none"]

# A key's lifetime from the request that sets it: at least a second, at most ten years.
ExpiresInSeconds = Annotated[int, Meta(ge=1, le=10 * 365 * 86_400)]
# Restricted-key scopes (api/scopes.py checks the identifiers).
Scopes = Annotated[list[str], Meta(max_length=64)]

# Jobs of one project that may train at once (an extension; null: TUNEWRIGHT_MAX_RUNNING_JOBS_PER_PROJECT).
MaxRunningJobs = Annotated[int, Meta(ge=1, le=10_000)]


class ProjectStatus(StrEnum):
    """`Project.status`."""

    ACTIVE = "active"
    ARCHIVED = "archived"


class OwnerProjectAccess(StrEnum):
    """`ProjectApiKey.owner_project_access`: whether the key's owner can use the project now."""

    ACTIVE = "active"
    INACTIVE = "inactive"


class ProjectCreateRequest(Request, kw_only=True):
    """`ProjectCreateRequest`: `residency` other than `GLOBAL` is refused (no regions here)."""

    name: str
    residency: ProjectResidency | None | UnsetType = UNSET
    external_key_id: str | None | UnsetType = UNSET
    max_running_jobs: MaxRunningJobs | None | UnsetType = UNSET


class ProjectUpdateRequest(Request, kw_only=True):
    """`ProjectUpdateRequest`: only the fields sent change; `external_key_id: null` clears it.

    `max_running_jobs` is an extension: the project's cap of jobs training at once; null returns it to the
    deployment's `TUNEWRIGHT_MAX_RUNNING_JOBS_PER_PROJECT`.
    """

    name: str | None | UnsetType = UNSET
    external_key_id: str | None | UnsetType = UNSET
    max_running_jobs: MaxRunningJobs | None | UnsetType = UNSET


class Project(Response, kw_only=True):
    """`Project`: name, archived_at, status and external_key_id are nullable, so always sent.

    `organization_id` is an addition (OpenAI's `Project` has no organization: its admin keys see one): the
    operator key lists every organization's projects, and each says whose it is, named as on a job.
    `max_running_jobs` is another: the project's own cap of jobs training at once, null when the deployment's
    `TUNEWRIGHT_MAX_RUNNING_JOBS_PER_PROJECT` applies.
    """

    id: str
    object: Literal["organization.project"] = "organization.project"
    name: str | None
    created_at: int
    archived_at: int | None
    status: str | None
    external_key_id: str | None
    residency: ProjectResidency | UnsetType = UNSET
    organization_id: str
    max_running_jobs: int | None

    @classmethod
    def from_record(cls, record: ProjectRecord) -> Project:
        """Map a project row."""
        return cls(
            id=record.id,
            name=record.name,
            created_at=record.created_at,
            archived_at=record.archived_at,
            status=record.status,
            external_key_id=record.external_key_id,
            organization_id=record.organization_id,
            max_running_jobs=record.max_running_jobs,
        )


class ProjectApiKeyOwnerUser(Response, kw_only=True):
    """`ProjectApiKeyOwnerUser`: for keys minted by the operator (CLI), a synthetic user (see service)."""

    id: str
    email: str
    name: str
    created_at: int
    role: str


class ProjectApiKeyOwnerServiceAccount(Response, kw_only=True):
    """`ProjectApiKeyOwnerServiceAccount`."""

    id: str
    name: str
    created_at: int
    role: str

    @classmethod
    def from_record(cls, record: ServiceAccountRecord) -> ProjectApiKeyOwnerServiceAccount:
        """Map a service-account row."""
        return cls(id=record.id, name=record.name, created_at=record.created_at, role=record.role)


class ProjectApiKeyOwner(Response, kw_only=True):
    """`ProjectApiKey.owner`: `type` plus the matching object; the other one is left out."""

    type: Literal["user", "service_account"]
    user: ProjectApiKeyOwnerUser | UnsetType = UNSET
    service_account: ProjectApiKeyOwnerServiceAccount | UnsetType = UNSET


class ProjectApiKey(Response, kw_only=True):
    """`ProjectApiKey`: every field is required; `last_used_at` is null until first use."""

    object: Literal["organization.project.api_key"] = "organization.project.api_key"
    redacted_value: str
    name: str
    created_at: int
    last_used_at: int | None
    id: str
    owner_project_access: OwnerProjectAccess
    owner: ProjectApiKeyOwner
    expires_at: int | None
    scopes: list[str]  # an extension: the key's scope restrictions, empty for all permissions

    @classmethod
    def from_record(
        cls, record: ApiKeyRecord, *, owner: ProjectApiKeyOwner, access: OwnerProjectAccess
    ) -> ProjectApiKey:
        """Map a key row; the owner and access are resolved by the service."""
        return cls(
            redacted_value=record.redacted_value,
            name=record.name,
            created_at=record.created_at,
            last_used_at=record.last_used_at,
            id=record.id,
            owner_project_access=access,
            owner=owner,
            expires_at=record.expires_at,
            scopes=list(record.scopes or ()),
        )


class ProjectApiKeyUpdateRequest(Request, kw_only=True):
    """Body of `POST …/api_keys/{id}` (the SDK's `api_keys.update`): at least one field; neither may be null."""

    expires_in_seconds: ExpiresInSeconds | UnsetType = UNSET
    scopes: Scopes | UnsetType = UNSET


class ProjectApiKeyDeleteResponse(Response, kw_only=True):
    """`ProjectApiKeyDeleteResponse`."""

    object: Literal["organization.project.api_key.deleted"] = "organization.project.api_key.deleted"
    id: str
    deleted: bool = True


class ProjectServiceAccountCreateRequest(Request, kw_only=True):
    """`ProjectServiceAccountCreateRequest`.

    `create_service_account_only: true` makes an account of role `none` without a key; keys added to it later work
    once its role is `member` or `owner`.
    """

    name: str
    create_service_account_only: bool | None | UnsetType = UNSET


class ProjectServiceAccountUpdateRequest(Request, kw_only=True):
    """`UpdateProjectServiceAccountBody`."""

    name: str | UnsetType = UNSET
    role: Literal["member", "owner"] | UnsetType = UNSET


class ServiceAccountApiKeyCreateRequest(Request, kw_only=True):
    """Body of `POST …/service_accounts/{id}/api_keys` (the SDK's `service_accounts.api_keys.create`)."""

    name: str | UnsetType = UNSET
    scopes: Scopes | UnsetType = UNSET
    expires_in_seconds: ExpiresInSeconds | None | UnsetType = UNSET


class ProjectServiceAccount(Response, kw_only=True):
    """`ProjectServiceAccount`."""

    object: Literal["organization.project.service_account"] = "organization.project.service_account"
    id: str
    name: str
    role: ServiceAccountRole
    created_at: int

    @classmethod
    def from_record(cls, record: ServiceAccountRecord) -> ProjectServiceAccount:
        """Map a service-account row."""
        role = cast("ServiceAccountRole", record.role)
        return cls(id=record.id, name=record.name, role=role, created_at=record.created_at)


class ProjectServiceAccountApiKey(Response, kw_only=True):
    """`ProjectServiceAccountApiKey`: the only object that ever carries a key's secret (`value`)."""

    object: Literal["organization.project.service_account.api_key"] = "organization.project.service_account.api_key"
    value: str
    name: str
    created_at: int
    id: str
    expires_at: int | None

    @classmethod
    def from_record(cls, key: ApiKeyRecord, *, secret: str) -> ProjectServiceAccountApiKey:
        """Map a new key; `secret` is the clear key, never stored."""
        return cls(value=secret, name=key.name, created_at=key.created_at, id=key.id, expires_at=key.expires_at)


class ProjectServiceAccountCreateResponse(Response, kw_only=True):
    """`ProjectServiceAccountCreateResponse`: the account and its first key, secret shown once."""

    object: Literal["organization.project.service_account"] = "organization.project.service_account"
    id: str
    name: str
    role: Literal["member", "none"]
    created_at: int
    api_key: ProjectServiceAccountApiKey | None

    @classmethod
    def from_record(
        cls, record: ServiceAccountRecord, *, key: ApiKeyRecord | None, secret: str | None
    ) -> ProjectServiceAccountCreateResponse:
        """Map a new account and its key (none for an account of role `none`); `secret` is shown this once."""
        return cls(
            id=record.id,
            name=record.name,
            role="none" if key is None else "member",
            created_at=record.created_at,
            api_key=None
            if key is None or secret is None
            else ProjectServiceAccountApiKey.from_record(key, secret=secret),
        )


class ProjectServiceAccountDeleteResponse(Response, kw_only=True):
    """`ProjectServiceAccountDeleteResponse`."""

    object: Literal["organization.project.service_account.deleted"] = "organization.project.service_account.deleted"
    id: str
    deleted: bool = True

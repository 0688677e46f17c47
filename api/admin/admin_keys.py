"""`/v1/organization/admin_api_keys`: an organization's admin keys (`client.admin.organization.admin_api_keys`).

An admin key acts on its own organization; the operator key acts on the organization its `OpenAI-Organization`
header names (required here: admin keys belong to one organization). Tunewright has no users, so every admin key
is owned by the synthetic operator user of api/admin/service.py (`type: user`, `object: organization.user`). A
key's secret (`value`) is in the create answer only; it is stored as a digest. Deleting a key revokes it at once
(`api_key.deleted`); an expired key is refused by api/auth.py and still listed with its `expires_at`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody
from msgspec import UNSET, Meta, UnsetType

from tunewright.api.admin.service import OPERATOR_USER_ID, OPERATOR_USER_NAME, organization_of
from tunewright.api.auth import Caller, require_admin
from tunewright.api.dependencies import AppStores
from tunewright.api.errors import InvalidRequestError, NotFoundError, echo
from tunewright.api.pagination import check_choice, check_limit, edge_ids
from tunewright.api.schemas import CursorPageWithIds, Request, Response
from tunewright.storage.api_keys import mint_api_key
from tunewright.storage.errors import NotFound

if TYPE_CHECKING:
    from tunewright.api.auth import Principal
    from tunewright.storage.base import Stores
    from tunewright.storage.records import ApiKeyRecord, OrganizationRecord

MAX_LIMIT = 100
ORDERS = ("asc", "desc")


class AdminApiKeyOwner(Response, kw_only=True):
    """`AdminApiKey.owner`: the operator, the one user this server knows."""

    type: Literal["user"] = "user"
    object: Literal["organization.user"] = "organization.user"
    id: str = OPERATOR_USER_ID
    name: str = OPERATOR_USER_NAME
    created_at: int
    role: Literal["owner"] = "owner"


class AdminApiKey(Response, kw_only=True):
    """`AdminApiKey`."""

    object: Literal["organization.admin_api_key"] = "organization.admin_api_key"
    id: str
    name: str | None
    redacted_value: str
    created_at: int
    expires_at: int | None
    last_used_at: int | None
    owner: AdminApiKeyOwner

    @classmethod
    def from_record(cls, record: ApiKeyRecord, organization: OrganizationRecord) -> AdminApiKey:
        """Map an admin key row."""
        return cls(
            id=record.id,
            name=record.name,
            redacted_value=record.redacted_value,
            created_at=record.created_at,
            expires_at=record.expires_at,
            last_used_at=record.last_used_at,
            owner=AdminApiKeyOwner(created_at=organization.created_at),
        )


class AdminApiKeyCreateResponse(AdminApiKey, kw_only=True):
    """`AdminApiKeyCreateResponse`: the key and, this once, its secret."""

    value: str


class AdminApiKeyDeleteResponse(Response, kw_only=True):
    """The answer of `DELETE /v1/organization/admin_api_keys/{key_id}`."""

    id: str
    object: Literal["organization.admin_api_key.deleted"] = "organization.admin_api_key.deleted"
    deleted: bool = True


class AdminApiKeyCreateRequest(Request, kw_only=True):
    """Body of `POST /v1/organization/admin_api_keys`: `expires_in_seconds` at most a year, as OpenAI's."""

    name: str
    expires_in_seconds: Annotated[int, Meta(ge=1, le=31_536_000)] | UnsetType = UNSET


def _not_found(key_id: str) -> NotFoundError:
    return NotFoundError(f"No such admin API key: {echo(key_id)}", param="key_id", code="api_key_not_found")


def _key(stores: Stores, organization: OrganizationRecord, key_id: str) -> ApiKeyRecord:
    try:
        return stores.metadata.get_api_key(key_id, organization_id=organization.id, project_id=None)
    except NotFound:
        raise _not_found(key_id) from None


def create(stores: Stores, principal: Principal, data: AdminApiKeyCreateRequest) -> AdminApiKeyCreateResponse:
    """Mint an admin key of the caller's organization; its secret is in the answer only."""
    organization = organization_of(stores, principal)
    if not data.name.strip():
        raise InvalidRequestError("Invalid 'name': must be a non-empty string.", param="name", code="invalid_value")
    now = int(time.time())
    record, secret = mint_api_key(
        organization_id=organization.id, project_id=None, name=data.name, kind="admin", now=now
    )
    if data.expires_in_seconds is not UNSET:
        record = msgspec.structs.replace(record, expires_at=now + data.expires_in_seconds)
    stores.metadata.create_api_key(record, actor=principal.actor)
    view = AdminApiKey.from_record(record, organization)
    return AdminApiKeyCreateResponse(**msgspec.structs.asdict(view), value=secret)


class AdminApiKeysController(Controller):
    """`/v1/organization/admin_api_keys`."""

    path = "/v1/organization/admin_api_keys"
    guards = [require_admin]
    tags = ["Admin API keys"]

    @get("/", sync_to_thread=True)
    def list_admin_api_keys(
        self,
        stores: AppStores,
        principal: Caller,
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 20,
        order: FromQuery[str] = "asc",
    ) -> CursorPageWithIds[AdminApiKey]:
        """List the organization's unrevoked admin keys by creation time."""
        organization = organization_of(stores, principal)
        page = stores.metadata.list_api_keys(
            organization_id=organization.id,
            project_id=None,
            after=after,
            limit=check_limit(limit, maximum=MAX_LIMIT),
            order=check_choice(order, ORDERS, param="order"),
        )
        first_id, last_id = edge_ids(page.items)
        return CursorPageWithIds(
            data=[AdminApiKey.from_record(r, organization) for r in page.items],
            first_id=first_id,
            last_id=last_id,
            has_more=page.has_more,
        )

    @post("/", status_code=200, sync_to_thread=True)
    def create_admin_api_key(
        self, stores: AppStores, principal: Caller, data: JSONBody[AdminApiKeyCreateRequest]
    ) -> AdminApiKeyCreateResponse:
        """Create an admin key; the answer holds its secret, shown this once."""
        return create(stores, principal, data)

    @get("/{key_id:str}", sync_to_thread=True)
    def retrieve_admin_api_key(self, stores: AppStores, principal: Caller, key_id: FromPath[str]) -> AdminApiKey:
        """Return one unrevoked admin key (never its secret)."""
        organization = organization_of(stores, principal)
        return AdminApiKey.from_record(_key(stores, organization, key_id), organization)

    @delete("/{key_id:str}", status_code=200, sync_to_thread=True)
    def delete_admin_api_key(
        self, stores: AppStores, principal: Caller, key_id: FromPath[str]
    ) -> AdminApiKeyDeleteResponse:
        """Revoke an admin key; it stops working at once."""
        organization = organization_of(stores, principal)
        try:
            stores.metadata.revoke_api_key(
                key_id, organization_id=organization.id, project_id=None, actor=principal.actor
            )
        except NotFound:
            raise _not_found(key_id) from None
        return AdminApiKeyDeleteResponse(id=key_id)

"""Authentication: a Bearer key resolves to a Principal scoped to one project or one organization.

Keys are stored only as SHA-256 digests; the lookup is by digest and the final comparison is constant-time.
Guards run before the body is read, so a bad key is a 401 whatever the body holds. They are `async` and make
their one indexed lookup inline: Litestar would run a sync guard through a worker thread, and that hop costs
more than the query (bench/README.md has the figures). The guards let the store answer a usable key from
memory for `KEY_CACHE_TTL_S` (half a second): on PostgreSQL the lookup is a round trip on every request
otherwise, and a key revoked in any process is still refused everywhere within that bound. Once the key is known,
the guard checks a restricted key's scopes against the route's (api/scopes.py), then takes one request from its
per-minute limit (api/ratelimits/limiter.py), except on the inference routes, which are limited per project and
model by their service. An expired key, or one of a service account without a role in its project, is refused
with a 401 that says so. On the routes that honour `Idempotency-Key`, the project guard then claims the
request's key (api/idempotency.py): the key belongs to the caller's project.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import msgspec
from litestar import Request  # noqa: TC002 - Litestar reads the dependency's signature at run time
from litestar.di import NamedDependency

from tunewright.api.errors import AuthenticationError, PermissionDeniedError
from tunewright.api.idempotency import claim_idempotency_key
from tunewright.api.scopes import check_key_scopes
from tunewright.storage.api_keys import hash_secret
from tunewright.storage.audit import OPERATOR_ACTOR, AuditActor
from tunewright.storage.metadata_tenants import KEY_CACHE_TTL_S

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from tunewright.storage.base import Stores

OPERATOR = "operator"
TOUCH_EVERY_S = 60

_touched: dict[str, int] = {}
"""When this process last wrote each key's `last_used_at`. A cached key's `last_used_at` can be older than that
write, and concurrent requests all see the value from before it: this keeps them from writing it again."""
_TOUCHED_MAX = 10_000


class Principal(msgspec.Struct, kw_only=True, frozen=True):
    """Who is calling: a project key (project_id set) or an admin key (organization or operator)."""

    key_id: str
    kind: str  # project | service_account | admin | operator
    organization_id: str | None  # None: the operator key without an OpenAI-Organization header
    project_id: str | None = None
    service_account_id: str | None = None
    last_used_at: int | None = None
    scopes: tuple[str, ...] = ()  # empty: all permissions (api/scopes.py)

    @property
    def is_admin(self) -> bool:
        """True for organization admin keys and the operator key."""
        return self.kind in ("admin", OPERATOR)

    @property
    def actor(self) -> AuditActor:
        """The key as the audit log names who made a change."""
        if self.kind == OPERATOR:
            return OPERATOR_ACTOR
        return AuditActor(key_id=self.key_id, kind=self.kind, service_account_id=self.service_account_id)


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    return token


def _shown(token: str) -> str:
    return f"{token[:5]}***{token[-4:]}" if len(token) > 12 else "***"


def _refused(token: str, stores: Stores, digest: str) -> AuthenticationError:
    """The 401 for a key that is not usable: why, when the key exists (only its holder can learn that)."""
    record = stores.metadata.find_api_key(digest)
    now = int(time.time())
    if record is not None and record.revoked_at is None and hmac.compare_digest(record.secret_hash, digest):
        if record.expires_at is not None and record.expires_at <= now:
            return AuthenticationError(
                f"The API key provided expired at {record.expires_at} (unix time): {_shown(token)}.",
                code="api_key_expired",
            )
        if record.service_account_id is not None:
            return AuthenticationError(
                f"The API key provided belongs to service account {record.service_account_id}, which has no role "
                f"in project {record.project_id}: {_shown(token)}.",
                code="invalid_api_key",
            )
    return AuthenticationError(f"Incorrect API key provided: {_shown(token)}.")


def authenticate(
    token: str,
    stores: Stores,
    *,
    operator_key: str | None,
    organization_header: str | None,
    max_age_s: float = 0.0,
) -> Principal:
    """Resolve a secret key to a Principal; `max_age_s` lets the store answer from its cache of usable keys.

    Raises:
        AuthenticationError: unknown or revoked key, or an organization header that does not match.
    """
    if operator_key and hmac.compare_digest(token.encode(), operator_key.encode()):
        return Principal(key_id=OPERATOR, kind=OPERATOR, organization_id=organization_header or None)
    digest = hash_secret(token)
    record = stores.metadata.find_usable_api_key(digest, max_age_s=max_age_s)
    if record is None or not hmac.compare_digest(record.secret_hash, digest):
        raise _refused(token, stores, digest)
    if record.expires_at is not None and record.expires_at <= time.time():  # expired while in the key cache
        raise _refused(token, stores, digest)
    if organization_header and organization_header != record.organization_id:
        raise AuthenticationError(
            f"OpenAI-Organization header should match organization for API key: {organization_header}.",
            code="mismatched_organization",
        )
    return Principal(
        key_id=record.id,
        kind=record.kind,
        organization_id=record.organization_id,
        project_id=record.project_id,
        service_account_id=record.service_account_id,
        last_used_at=record.last_used_at,
        scopes=tuple(record.scopes or ()),
    )


async def _touch(stores: Stores, principal: Principal) -> None:
    """Record use at most once a minute per process (a write: on a worker thread, never on the event loop)."""
    if principal.kind == OPERATOR:
        return
    now = int(time.time())
    last = max(principal.last_used_at or 0, _touched.get(principal.key_id, 0))
    if last and now - last < TOUCH_EVERY_S:
        return
    if len(_touched) >= _TOUCHED_MAX:
        _touched.clear()
    _touched[principal.key_id] = now  # before the write: requests arriving meanwhile skip it
    await anyio.to_thread.run_sync(stores.metadata.touch_api_key, principal.key_id, now)


MODEL_LIMITS = "model_rate_limits"
"""`opt` key of the inference routes: limited per project and model by their service, not per key here."""


async def _principal(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> Principal:
    app_state = connection.app.state
    principal = authenticate(
        _bearer(connection),
        app_state.stores,
        operator_key=app_state.settings.admin_key,
        organization_header=connection.headers.get("openai-organization"),
        max_age_s=KEY_CACHE_TTL_S,
    )
    check_key_scopes(principal.scopes, handler, connection.scope["method"])
    if not handler.opt.get(MODEL_LIMITS):
        await app_state.limiter.check_key(principal)
    await _touch(app_state.stores, principal)
    connection.state.principal = principal
    return principal


async def require_project(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard for project routes: a project or service-account key."""
    principal = await _principal(connection, handler)
    if principal.project_id is None:
        raise PermissionDeniedError(
            "This route needs a project API key; admin keys act on /v1/organization routes only."
        )
    project_header = connection.headers.get("openai-project")
    if project_header and project_header != principal.project_id:
        raise AuthenticationError(
            f"OpenAI-Project header should match project for API key: {project_header}.",
            code="mismatched_project",
        )
    await claim_idempotency_key(connection, principal.project_id)  # routes that opt in (api/idempotency.py)


async def require_project_or_admin(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard for routes both a project key and an admin key may use (checkpoint permissions)."""
    await _principal(connection, handler)


async def require_admin(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard for /v1/organization routes: an organization admin key or the operator key."""
    principal = await _principal(connection, handler)
    if not principal.is_admin:
        raise PermissionDeniedError("You have insufficient permissions for this operation: it needs an admin key.")


def current_principal(request: Request[Any, Any, Any]) -> Principal:
    """Dependency: the Principal a guard stored on the request."""
    return request.state.principal


# Handlers declare `principal: Caller`; the app provides it from what the guard resolved.
Caller = NamedDependency[Principal]

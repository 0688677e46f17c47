"""Scopes of restricted project keys: which routes a key may call.

A key with no scopes (null or an empty list) has every permission of its project, as OpenAI's "an empty array
means All permissions". A restricted key holds identifiers of OpenAI's form `api.<resource>.<access>`:

- `api.all.read`: every read (GET) route of the project;
- `api.model.read` (list and retrieve models), `api.model.request` (chat and legacy completions),
  `api.model.write` (delete a fine-tuned model);
- `api.files.read` / `api.files.write` (files and uploads);
- `api.fine_tuning.read` / `api.fine_tuning.write` (jobs, their events, checkpoints, checkpoint permissions, the
  estimate, exports and the graders routes);
- `api.webhooks.read` / `api.webhooks.write` (webhook endpoints and their deliveries).

`write` includes `read` of the same resource; `request` is only the inference routes. A route names its resource
in its handler's `opt[SCOPE]` (controllers set it for all their routes); the access is `read` for GET and HEAD
and `write` otherwise, unless the handler sets `opt[SCOPE_ACCESS]` (the estimate is a read; inference is
`request`). A key without the scope gets 401 `missing_scope`, as OpenAI answers. Admin keys carry no scopes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.api.errors import AuthenticationError, InvalidRequestError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from litestar.handlers.base import BaseRouteHandler

SCOPE = "scope"
"""Handler `opt` key: the resource a route belongs to (`model`, `files`, `fine_tuning`, `webhooks`)."""
SCOPE_ACCESS = "scope_access"
"""Handler `opt` key: the access a route needs when not given by its method (`read`, `write`, `request`)."""

ALL_READ = "api.all.read"
RESOURCE_ACCESS: dict[str, tuple[str, ...]] = {
    "model": ("read", "request", "write"),
    "files": ("read", "write"),
    "fine_tuning": ("read", "write"),
    "webhooks": ("read", "write"),
}
KNOWN_SCOPES: tuple[str, ...] = (
    ALL_READ,
    *(f"api.{resource}.{access}" for resource, accesses in RESOURCE_ACCESS.items() for access in accesses),
)
MAX_SCOPES = len(KNOWN_SCOPES)
_READ_METHODS = frozenset({"GET", "HEAD"})


def check_scopes(scopes: Sequence[Any], *, param: str = "scopes") -> list[str]:
    """Return `scopes` without duplicates, in the order sent.

    Raises:
        InvalidRequestError: an item is not a known scope identifier.
    """
    kept: list[str] = []
    for index, scope in enumerate(scopes):
        if not isinstance(scope, str) or scope not in KNOWN_SCOPES:
            raise InvalidRequestError(
                f"Invalid '{param}[{index}]': {scope!r} is not a scope of this server; the scopes are "
                f"{', '.join(KNOWN_SCOPES)} (an empty list means all permissions).",
                param=param,
                code="invalid_value",
            )
        if scope not in kept:
            kept.append(scope)
    return kept


def required_scope(handler: BaseRouteHandler, method: str) -> str | None:
    """The scope a route needs of a restricted key; None for a route outside every resource."""
    resource = handler.opt.get(SCOPE)
    if resource is None:
        return None
    access = handler.opt.get(SCOPE_ACCESS) or ("read" if method in _READ_METHODS else "write")
    return f"api.{resource}.{access}"


def allows(scopes: Sequence[str], needed: str) -> bool:
    """Whether a restricted key's `scopes` grant `needed` (`write` grants `read`; `api.all.read` every read)."""
    if needed in scopes:
        return True
    if needed.endswith(".read"):
        return ALL_READ in scopes or f"{needed.removesuffix('.read')}.write" in scopes
    return False


def check_key_scopes(scopes: Sequence[str] | None, handler: BaseRouteHandler, method: str) -> None:
    """Refuse a restricted key that lacks the route's scope.

    Raises:
        AuthenticationError: 401 `missing_scope`, naming the scope.
    """
    if not scopes:
        return
    needed = required_scope(handler, method)
    if needed is None or allows(scopes, needed):
        return
    raise AuthenticationError(
        f"You have insufficient permissions for this operation. Missing scopes: {needed}. This API key is "
        "restricted: ask an admin of the project to add the scope to it.",
        code="missing_scope",
    )

"""NUL (U+0000) in request text: refused where the request names it, with the field in `param`.

PostgreSQL cannot store text holding NUL, and the storage layer refuses it on SQLite too (`storage/db.py`,
`UnstorableText`), so no id, name or metadata value ever holds one. Ids in the path are left to their lookups,
which find nothing and answer each route's own 404, as for any unknown id. What a request writes or filters by
is checked here, once for every route, so the 400 names the field:

- query parameters (`after`, `metadata[key]`, …): `refuse_nul_in_query`, the app's `before_request` hook;
- JSON bodies, keys and string values at any depth: `NulCheckedRequest`, the app's request class;
- multipart text fields and the file's name: `api/forms.py` calls `refuse_nul` as it reads them.

A route whose body text goes to a model and is never stored (chat and text completions) opts out of the body
check with `opt={ALLOW_NUL_IN_BODY: True}`; its `model` is a lookup, answered like an id in the path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.api.bodies import APIRequest
from tunewright.api.errors import InvalidRequestError

if TYPE_CHECKING:
    from litestar import Request

ALLOW_NUL_IN_BODY = "allow_nul_in_body"
"""Route handler `opt` key: the JSON body may hold NUL (its text is never stored)."""

NUL = "\x00"


def nul_error(param: str) -> InvalidRequestError:
    """The 400 for NUL in the field `param`."""
    return InvalidRequestError(
        f"Invalid '{param}': text cannot contain NUL (\\u0000) characters.", param=param, code="invalid_value"
    )


def refuse_nul(value: str, param: str) -> None:
    """Raise the 400 naming `param` if `value` holds NUL."""
    if NUL in value:
        raise nul_error(param)


def find_nul(value: Any, path: str = "") -> str | None:
    """The path (`a.b[0].c`) of the first string in a decoded JSON value that holds NUL, or None.

    A key holding NUL is reported at the path of its object (its own text cannot name a field).
    """
    if isinstance(value, str):
        return path if NUL in value and path else None  # a bare string body is refused by its decoding
    if isinstance(value, dict):
        for key, item in value.items():
            if NUL in key:
                return path or key.replace(NUL, "\\u0000")
            found = find_nul(item, f"{path}.{key}" if path else key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_nul(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _query_param(key: str) -> str:
    """How to name a query key in `param`: `metadata[a]` as is, its base name when the key itself holds NUL."""
    if NUL not in key:
        return key
    base = key.split("[", 1)[0]
    return base if base and NUL not in base else key.replace(NUL, "\\u0000")


async def refuse_nul_in_query(request: Request[Any, Any, Any]) -> None:
    """`before_request` hook: 400 naming the query parameter whose key or value holds NUL."""
    for key, value in request.query_params.multi_items():
        if NUL in key or NUL in value:
            raise nul_error(_query_param(key))


class NulCheckedRequest(APIRequest):
    """The app's request: a JSON body decoded as `APIRequest` does, holding no NUL unless the route opts out."""

    async def json(self) -> Any:
        """The decoded body; 400 naming the first field whose text holds NUL."""
        value = await super().json()
        if not self.route_handler.opt.get(ALLOW_NUL_IN_BODY):
            param = find_nul(value)
            if param is not None:
                raise nul_error(param)
        return value

"""Query-string helpers shared by list endpoints: limits, bracketed maps and arrays, page ids."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.api.errors import InvalidRequestError, echo

if TYPE_CHECKING:
    from collections.abc import Sequence

    from litestar.datastructures import MultiDict


def check_limit(limit: int, *, maximum: int, minimum: int = 1) -> int:
    """Return `limit` or raise 400 naming `limit` when it is out of range."""
    if not minimum <= limit <= maximum:
        raise InvalidRequestError(
            f"Invalid 'limit': must be between {minimum} and {maximum}, got {limit}.",
            param="limit",
            code="invalid_value",
        )
    return limit


def check_choice(value: str, choices: Sequence[str], *, param: str) -> str:
    """Return `value` or raise 400 naming `param` when it is not one of `choices`."""
    if value not in choices:
        allowed = ", ".join(f"'{c}'" for c in choices)
        raise InvalidRequestError(
            f"Invalid value for '{param}': expected one of {allowed}, got '{echo(value)}'.",
            param=param,
            code="invalid_value",
        )
    return value


def bracket_map(query: MultiDict[Any], name: str) -> dict[str, str] | None:
    """Collect `name[key]=value` pairs (the SDK's deepObject encoding) into a dict.

    Returns None when no such key is present; `name=null` alone gives an empty dict (objects without one).
    """
    found: dict[str, str] = {}
    present = False
    for key, value in query.multi_items():
        if key.startswith(name + "[") and key.endswith("]"):
            found[key[len(name) + 1 : -1]] = str(value)
            present = True
        elif key == name and str(value) == "null":
            present = True
    return found if present else None


def query_list(query: MultiDict[Any], name: str) -> tuple[str, ...] | None:
    """Collect an array parameter sent as `name[]=a&name[]=b` (the SDK's encoding) or `name=a&name=b`.

    Returns None when the parameter is absent.
    """
    values = tuple(str(value) for key, value in query.multi_items() if key in (name, name + "[]"))
    return values or None


def edge_ids(items: Sequence[Any]) -> tuple[str | None, str | None]:
    """First and last id of a page, or (None, None) when it is empty."""
    if not items:
        return None, None
    return items[0].id, items[-1].id


def bracket_list(query: MultiDict[Any], name: str) -> list[str] | None:
    """Collect `name[]=value` (the SDK's encoding of a list) and plain repeated `name=value` into a list.

    Returns None when neither is present.
    """
    return [str(v) for key, v in query.multi_items() if key in (f"{name}[]", name)] or None

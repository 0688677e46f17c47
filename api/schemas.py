"""Wire-schema bases and the list envelopes shared by several endpoints."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

import msgspec

T = TypeVar("T")


class Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: OpenAI rejects unknown keys with 400, so decoding forbids them."""


class Response(msgspec.Struct, kw_only=True):
    """Base of response bodies: fields in the OpenAPI document's order; UNSET fields are left out."""


class CursorPage(Response, Generic[T]):
    """`{object: "list", data, has_more}`: jobs and events lists."""

    data: list[T]
    has_more: bool
    object: Literal["list"] = "list"


class CursorPageWithIds(Response, Generic[T]):
    """`{object: "list", data, first_id, last_id, has_more}`: files, checkpoints, permissions, admin lists.

    `first_id`/`last_id` are null on an empty page (a deliberate deviation where the schema types them as
    plain strings: no id exists to put there).
    """

    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class DeletedObject(Response):
    """`{id, object, deleted}` answered by every delete."""

    id: str
    object: str
    deleted: bool = True

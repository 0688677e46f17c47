"""Wire objects of /v1/models."""

from __future__ import annotations

from typing import Literal

from tunewright.api.schemas import Response


class Model(Response):
    """`Model`: note `created`, not `created_at`."""

    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"


class ListModelsResponse(Response):
    """`{object: "list", data}`: no paging fields."""

    data: list[Model]
    object: Literal["list"] = "list"

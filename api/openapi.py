"""OpenAPI details Litestar cannot infer (the multipart bodies that routes read by hand), and the schema's router."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from litestar import Router
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType

if TYPE_CHECKING:
    from litestar.routes import BaseRoute
    from litestar.types import ControllerRouterHandler

_CATCH_ALL = "/{path:str}"

_STRING = Schema(type=OpenAPIType.STRING)
_BINARY = Schema(type=OpenAPIType.STRING, format="binary")  # type: ignore[arg-type]


def _multipart(properties: dict[str, Schema], required: list[str]) -> RequestBody:
    schema = Schema(type=OpenAPIType.OBJECT, properties=properties, required=required)  # type: ignore[arg-type]
    return RequestBody(content={"multipart/form-data": OpenAPIMediaType(schema=schema)}, required=True)


@dataclass
class CreateFileOperation(Operation):
    """`POST /v1/files`: the multipart form of OpenAI's `CreateFileRequest`."""

    def __post_init__(self) -> None:
        """Describe the form the route streams."""
        self.request_body = _multipart(
            {
                "file": _BINARY,
                "purpose": Schema(
                    type=OpenAPIType.STRING,
                    enum=["assistants", "batch", "fine-tune", "vision", "user_data", "evals"],
                ),
                "expires_after[anchor]": Schema(type=OpenAPIType.STRING, enum=["created_at"]),
                "expires_after[seconds]": Schema(type=OpenAPIType.INTEGER, minimum=3600, maximum=2_592_000),
            },
            ["file", "purpose"],
        )


@dataclass
class AddUploadPartOperation(Operation):
    """`POST /v1/uploads/{upload_id}/parts`: the multipart form of OpenAI's `AddUploadPartRequest`."""

    def __post_init__(self) -> None:
        """Describe the form the route streams."""
        self.request_body = _multipart({"data": _BINARY}, ["data"])


class SchemaRouter(Router):
    """Serves the schema and nothing else.

    Litestar's OpenAPI plugin also registers `GET /{path:str}` on its router, which answered any other
    one-segment path (`GET /nope`) with an HTML 404 page, and other methods there with a 405. Without it
    those paths reach the app's own 404, in OpenAI's envelope like every unknown URL.
    """

    def register(self, value: ControllerRouterHandler) -> list[BaseRoute]:
        """Register `value`, unless it is the plugin's catch-all page."""
        if isinstance(value, HTTPRouteHandler) and _CATCH_ALL in value.paths:
            return []
        return super().register(value)

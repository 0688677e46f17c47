"""Server-sent events shared by every streaming route: frames, the response class, and its OpenAPI shape.

Used by `GET …/events?stream=true` and by `stream: true` completions: each frame is one `data: <JSON>` line
and a blank line, the stream ends with `data: [DONE]`, and an error after the first byte is one
`data: {"error": …}` frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.response import Stream
from litestar.serialization import encode_json

if TYPE_CHECKING:
    from litestar.response.base import ASGIResponse

    from tunewright.api.errors import APIError

MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE_FRAME = b"data: [DONE]\n\n"
KEEPALIVE_FRAME = b": keep-alive\n\n"


class EventStream(Stream):
    """A `Stream` whose own media type wins over the handler's.

    Litestar 2.x's `Stream.to_asgi_response` prefers the media type of the route (its JSON answer's
    `application/json`) to the response's, contrary to its docstring.
    """

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        """Build the ASGI response with `text/event-stream`."""
        kwargs["media_type"] = self.media_type
        return super().to_asgi_response(*args, **kwargs)


def error_frame(error: APIError) -> bytes:
    """One `data: {"error": …}` frame in OpenAI's envelope."""
    return b"data: " + encode_json(error.body()) + b"\n\n"


@dataclass
class SseOperation(Operation):
    """A route answering JSON, or server-sent events when asked (Litestar renders the union as `oneOf`).

    Subclasses name what the frames carry in `frames`.
    """

    frames: ClassVar[str] = "`data: <JSON>` frames, then `data: [DONE]`."

    def __post_init__(self) -> None:
        """Give the 200 response one media type per answer instead of a `oneOf` with an empty member."""
        success = (self.responses or {}).get("200")
        if not isinstance(success, OpenAPIResponse) or not success.content:
            return
        json_media = success.content.get("application/json")
        if json_media is not None and isinstance(json_media.schema, Schema) and json_media.schema.one_of:
            members = [m for m in json_media.schema.one_of if m != Schema()]
            if len(members) == 1:
                json_media.schema = members[0]
        success.content[MEDIA_TYPE] = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, description=self.frames))

"""Request bodies of the JSON routes: decoded in one place, so every route refuses bad bodies alike.

Litestar decodes a handler's `data` through `Request.json()` (multipart routes read `request.stream()` and
never call it); the app's request class narrows that one method.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from tunewright.api.errors import INVALID_JSON_MESSAGE, InvalidRequestError, unsupported_media_type

JSON_MEDIA_TYPE = "application/json"

NESTED_TOO_DEEPLY = " The body is nested too deeply."


class APIRequest(Request[Any, Any, Any]):
    """Litestar's request, with JSON bodies that fail as OpenAI's API fails them."""

    async def json(self) -> Any:
        """The decoded JSON body (Litestar asks only when there is one: an empty body is `invalid_json`).

        Raises:
            UnsupportedMediaTypeError: 415 when the body is not sent as `application/json` (parameters such as
                `charset` allowed), a body without a `Content-Type` included.
            InvalidRequestError: `invalid_json` when the body nests deeper than the decoder's recursion allows
                (msgspec raises RecursionError there, which would otherwise be a 500).
        """
        media_type, _options = self.content_type
        if media_type != JSON_MEDIA_TYPE:
            raise unsupported_media_type(media_type, JSON_MEDIA_TYPE)
        try:
            return await super().json()
        except RecursionError:
            raise InvalidRequestError(INVALID_JSON_MESSAGE + NESTED_TOO_DEEPLY, code="invalid_json") from None

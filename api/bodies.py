"""Request bodies of the JSON routes: decoded in one place, so every route refuses bad bodies alike.

Litestar decodes a handler's `data` through `Request.json()` (multipart routes read `request.stream()` and
never call it); the app's request class narrows that one method.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from tunewright.api.errors import INVALID_JSON_MESSAGE, InvalidRequestError

NESTED_TOO_DEEPLY = " The body is nested too deeply."


class APIRequest(Request[Any, Any, Any]):
    """Litestar's request, with JSON bodies that fail as OpenAI's API fails them."""

    async def json(self) -> Any:
        """The decoded JSON body.

        Raises:
            InvalidRequestError: `invalid_json` when the body nests deeper than the decoder's recursion allows
                (msgspec raises RecursionError there, which would otherwise be a 500).
        """
        try:
            return await super().json()
        except RecursionError:
            raise InvalidRequestError(INVALID_JSON_MESSAGE + NESTED_TOO_DEEPLY, code="invalid_json") from None

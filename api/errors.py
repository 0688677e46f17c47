"""OpenAI-style errors: one exception per status, one translation table for every failure.

Every non-2xx body is `{"error": {"message", "type", "param", "code"}}` with all four keys present.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from litestar import MediaType, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from tunewright.storage import errors as storage_errors

if TYPE_CHECKING:
    from litestar import Request
    from litestar.types import ExceptionHandlersMap

logger = logging.getLogger(__name__)

MAX_ECHO = 200


def echo(value: object) -> str:
    """Render a user-supplied value for an error message, cut at 200 characters."""
    text = str(value)
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "…"


class APIError(Exception):
    """An error answered with OpenAI's envelope; subclasses fix the status, type and default code."""

    status_code: ClassVar[int] = 500
    type: ClassVar[str] = "invalid_request_error"
    default_code: ClassVar[str | None] = None
    retryable: ClassVar[bool] = True
    closes_connection: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        """Build the error; `code` defaults to the class's, `retryable` (`x-should-retry`) too."""
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})
        if retryable is not None:
            self.retryable = retryable  # type: ignore[misc]  # this error's own answer to the class default

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequestError(APIError):
    """400: the request is malformed or breaks a rule."""

    status_code = 400


class AuthenticationError(APIError):
    """401: missing, wrong or revoked key."""

    status_code = 401
    default_code = "invalid_api_key"


class PermissionDeniedError(APIError):
    """403: the key may not use this route."""

    status_code = 403
    type = "permission_error"
    default_code = "insufficient_permissions"


class NotFoundError(APIError):
    """404: no such object in the caller's project (another tenant's object included)."""

    status_code = 404


class MethodNotAllowedError(APIError):
    """405: the route exists with other methods."""

    status_code = 405
    default_code = "method_not_allowed"


class ConflictError(APIError):
    """409: a write raced with another; retrying cannot help, so the SDK is told not to."""

    status_code = 409
    default_code = "conflict"
    retryable = False


class PayloadTooLargeError(APIError):
    """413: the body is larger than the route accepts.

    Refused before the body is read (or part way): the unread rest would be taken for the next request on a
    kept-alive connection, so the response says `Connection: close` and the server closes it (as for any answer
    given before the body was read: api/metrics.py `serve_with_context`).
    """

    status_code = 413
    default_code = "payload_too_large"
    closes_connection = True


class UnsupportedMediaTypeError(APIError):
    """415: the body's content type is not one the route reads."""

    status_code = 415
    default_code = "unsupported_media_type"


def unsupported_media_type(content_type: str, accepted: str) -> UnsupportedMediaTypeError:
    """The 415 for a body sent as `content_type` (empty: sent without one) to a route that reads `accepted`."""
    return UnsupportedMediaTypeError(
        f"Unsupported content type '{echo(content_type or 'none')}': this endpoint takes {accepted}."
    )


class RateLimitError(APIError):
    """429: too many requests."""

    status_code = 429
    type = "requests"
    default_code = "rate_limit_exceeded"


class TokensRateLimitError(RateLimitError):
    """429 on a tokens-per-minute limit (OpenAI's `type` says which kind of limit was reached)."""

    type = "tokens"


class InsufficientQuotaError(RateLimitError):
    """429 `insufficient_quota`: the project has reached its spend limit; retrying cannot help."""

    type = "insufficient_quota"
    default_code = "insufficient_quota"
    retryable = False


class ServerError(APIError):
    """500: an unexpected failure; the message carries the request id."""

    status_code = 500
    type = "server_error"


class ServiceUnavailableError(APIError):
    """503: a backing store did not answer; a retry may help."""

    status_code = 503
    type = "server_error"
    default_code = "service_unavailable"


class InsufficientStorageError(APIError):
    """507: the server keeps its last free space for deletes and bookkeeping, so it takes no new data now.

    Not retried by the SDK: space comes back when files are deleted or an operator acts, not within the
    seconds a retry waits, and a retry would send the whole body again.
    """

    status_code = 507
    type = "server_error"
    default_code = "insufficient_storage"
    retryable = False


INSUFFICIENT_STORAGE_MESSAGE = (
    "The server does not have enough free storage to accept new data right now. Deleting files you no longer "
    "need frees space; if this persists, contact the operator."
)


def error_response(error: APIError, request_id: str | None = None) -> Response[Any]:
    """Render an APIError as a Litestar response (the app's outer layer adds `x-request-id`)."""
    headers = dict(error.headers)
    if not error.retryable:
        headers["x-should-retry"] = "false"
    if error.closes_connection:
        headers["connection"] = "close"
    return Response(content=error.body(), status_code=error.status_code, media_type=MediaType.JSON, headers=headers)


def _request_id(request: Request[Any, Any, Any]) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def _handle_api_error(request: Request[Any, Any, Any], exc: APIError) -> Response[Any]:
    if isinstance(exc, InsufficientQuotaError):
        metrics = request.app.state.get("metrics")
        if metrics is not None:  # an inference node has none, and no spend limits either
            kind = "job" if request.url.path.startswith("/v1/fine_tuning") else "inference"
            metrics.quota_rejections.labels(kind).inc()
    return error_response(exc, _request_id(request))


NUL_MESSAGE = "Text values cannot contain NUL (\\u0000) characters."

INVALID_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload.)"
)


def translate_validation(exc: ValidationException) -> APIError:
    """Map a Litestar/msgspec decode failure to 400 with the offending field in `param`."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    first = extra[0] if extra and isinstance(extra[0], dict) else {}
    message = str(first.get("message") or exc.detail or "")
    key = first.get("key")
    if key == "data" and message == "'data'":  # Litestar's way of saying the required body is absent
        return InvalidRequestError(INVALID_JSON_MESSAGE + " The body is empty.", code="invalid_json")
    param = key.removeprefix("data.").removeprefix("data") or None if isinstance(key, str) else None
    for marker, code in (
        ("missing required field `", "missing_required_parameter"),
        ("unknown field `", "unknown_parameter"),
    ):
        if marker in message:
            name = message.split(marker, 1)[1].split("`", 1)[0]
            full = f"{param}.{name}" if param else name
            if code == "unknown_parameter":
                return InvalidRequestError(
                    f"Unrecognized request argument supplied: {echo(full)}", param=full, code=code
                )
            return InvalidRequestError(f"Missing required parameter: '{full}'.", param=full, code=code)
    # msgspec says "Expected `int`, got `str`" for a wrong type and "Expected `int` >= 1" for a bad value.
    code = "invalid_type" if ", got `" in message else "invalid_value"
    where = f" for '{param}'" if param else ""
    return InvalidRequestError(f"Invalid value{where}: {echo(message)}", param=param, code=code)


def _handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    return error_response(translate_validation(exc), _request_id(request))


def _handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    method, path = request.method, request.url.path
    error: APIError
    if isinstance(exc, NotFoundException):
        error = NotFoundError(f"Invalid URL ({method} {path})", code="unknown_url")
    elif isinstance(exc, MethodNotAllowedException):
        error = MethodNotAllowedError(f"Method {method} is not allowed on {path}")
    elif isinstance(exc, RequestEntityTooLarge):
        error = PayloadTooLargeError("The request body is larger than this endpoint accepts.")
    elif exc.status_code == 415:
        error = UnsupportedMediaTypeError(str(exc.detail))
    elif exc.status_code >= 500:
        return _handle_unexpected(request, exc)
    elif exc.status_code == 400:
        error = InvalidRequestError(f"{INVALID_JSON_MESSAGE} ({echo(exc.detail)})", code="invalid_json")
    else:
        error = InvalidRequestError(str(exc.detail))
        error.status_code = exc.status_code  # type: ignore[misc]  # keep the framework's 4xx
    return error_response(error, _request_id(request))


def _handle_storage(request: Request[Any, Any, Any], exc: storage_errors.StorageError) -> Response[Any]:
    error: APIError
    if isinstance(exc, storage_errors.UnstorableText):  # before NotFound: a lookup's caller turned it into its 404
        error = InvalidRequestError(NUL_MESSAGE, code="invalid_value")
    elif isinstance(exc, storage_errors.NotFound):
        error = NotFoundError(str(exc) or "Not found.", code="not_found")
    elif isinstance(exc, storage_errors.InvalidCursor):
        error = InvalidRequestError(
            f"Invalid 'after': {echo(exc)} is not an object of this list.", param="after", code="invalid_value"
        )
    elif isinstance(exc, storage_errors.InsufficientStorage):  # before Unavailable: a full database is both
        logger.warning("refused %s %s: %s", request.method, request.url.path, exc)  # free space, for the operator
        error = InsufficientStorageError(INSUFFICIENT_STORAGE_MESSAGE)
    elif isinstance(exc, storage_errors.DatabaseUnavailable):
        error = ServiceUnavailableError("The database is unavailable; try again shortly.")
    elif isinstance(exc, storage_errors.Unavailable):
        error = ServiceUnavailableError("A backing store is unavailable; try again shortly.")
    elif isinstance(exc, storage_errors.Conflict | storage_errors.StateConflict):
        error = ConflictError("The object was changed by another request; read it again before retrying.")
    else:
        return _handle_unexpected(request, exc)
    return error_response(error, _request_id(request))


def _handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    request_id = _request_id(request)
    logger.error(
        "unhandled error on %s %s",
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"request_id": request_id},
    )
    error = ServerError(
        f"The server had an error while processing your request. Request id: {request_id}. "
        "Contact the operator with this id if the error persists."
    )
    return error_response(error, request_id)


def exception_handlers() -> ExceptionHandlersMap:
    """The translation table `create_app` registers."""
    return {
        APIError: _handle_api_error,
        ValidationException: _handle_validation,
        HTTPException: _handle_http,
        storage_errors.StorageError: _handle_storage,
        Exception: _handle_unexpected,
    }

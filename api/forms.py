"""Streaming multipart/form-data: text fields into a dict, the one file part into a ThreadedSink.

Reading `request.stream()` through the `multipart` push parser writes the file's bytes once (Litestar's own
form parsing spools them to a temporary file first) and lets a consumer refuse a bad first line early.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
from multipart import MultipartError, MultipartSegment, ParserLimitReached, PushMultipartParser, parse_options_header

from tunewright.api.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    echo,
    unsupported_media_type,
)
from tunewright.api.nul_guard import refuse_nul
from tunewright.api.streaming import SinkStopped

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from litestar import Request

    from tunewright.api.streaming import ThreadedSink

MAX_TEXT_FIELD = 64 * 1024
MAX_PART_HEADER_BYTES = 8192
MAX_PART_HEADERS = 16
FORM_OVERHEAD = 1024 * 1024


class FormResult:
    """What a form held: its text fields, the file part's filename and the sink's result."""

    def __init__(self) -> None:
        """Start empty."""
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_result: Any = None
        self.file_bytes = 0


def _boundary(request: Request[Any, Any, Any]) -> str:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != "multipart/form-data":
        raise unsupported_media_type(content_type, "multipart/form-data")
    boundary = options.get("boundary")
    if not boundary:
        raise InvalidRequestError("The multipart/form-data body has no boundary.", code="invalid_value")
    return boundary


def content_length(request: Request[Any, Any, Any]) -> int:
    """The request's `Content-Length`, or -1 when it has none (a chunked body)."""
    raw = request.headers.get("content-length")
    return int(raw) if raw and raw.isdigit() else -1


def _check_length(request: Request[Any, Any, Any], limit: int) -> int:
    length = content_length(request)
    if length > limit:
        raise PayloadTooLargeError(f"The request body is {length} bytes; this endpoint accepts at most {limit}.")
    return length


class _FormReader:
    """State of one form being read."""

    def __init__(
        self,
        *,
        file_field: str,
        text_fields: Collection[str],
        max_file_bytes: int,
        open_sink: Callable[[dict[str, str], str], ThreadedSink[Any]],
        task_group: anyio.abc.TaskGroup,
    ) -> None:
        self.file_field = file_field
        self.text_fields = text_fields
        self.max_file_bytes = max_file_bytes
        self.open_sink = open_sink
        self.task_group = task_group
        self.result = FormResult()
        self.segment: MultipartSegment | None = None
        self.text = bytearray()
        self.sink: ThreadedSink[Any] | None = None
        self.seen_file = False

    async def on_segment(self, segment: MultipartSegment) -> None:
        name = segment.name
        if name != self.file_field and name not in self.text_fields:
            raise InvalidRequestError(
                f"Unrecognized request argument supplied: {echo(name)}", param=name, code="unknown_parameter"
            )
        if name == self.file_field:
            if self.seen_file:
                raise InvalidRequestError(f"Only one '{name}' part is allowed.", param=name, code="invalid_value")
            self.seen_file = True
            refuse_nul(segment.filename or "", name)
            self.result.filename = segment.filename or "upload"
            self.sink = self.open_sink(dict(self.result.fields), self.result.filename)
            self.sink.start(self.task_group)
        self.segment = segment
        self.text.clear()

    async def on_data(self, data: bytes) -> None:
        if self.sink is not None:
            self.result.file_bytes += len(data)
            if self.result.file_bytes > self.max_file_bytes:
                error = PayloadTooLargeError(
                    f"The file is larger than this endpoint's limit of {self.max_file_bytes} bytes; "
                    "use the Uploads API (/v1/uploads) for larger files.",
                    param=self.file_field,
                )
                await self.sink.abort(error)
                raise error
            await self.sink.write(data)
            return
        self.text += data
        if len(self.text) > MAX_TEXT_FIELD:
            name = self.segment.name if self.segment else "field"
            raise InvalidRequestError(f"The form field '{name}' is too long.", param=name, code="invalid_value")

    async def on_end(self) -> None:
        if self.sink is not None:
            self.result.file_result = await self.sink.finish()
            self.sink = None
        elif self.segment is not None:
            try:
                value = self.text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidRequestError(
                    f"The form field '{self.segment.name}' is not valid UTF-8.", param=self.segment.name
                ) from exc
            refuse_nul(value, self.segment.name)
            self.result.fields[self.segment.name] = value
        self.segment = None

    async def abort(self, error: BaseException) -> None:
        if self.sink is not None:
            await self.sink.abort(error)
            self.sink = None

    def cancel(self) -> None:
        if self.sink is not None:
            self.sink.cancel(SinkStopped("the request was cancelled"))
            self.sink = None


async def read_form(
    request: Request[Any, Any, Any],
    *,
    file_field: str,
    text_fields: Collection[str],
    max_file_bytes: int,
    open_sink: Callable[[dict[str, str], str], ThreadedSink[Any]],
) -> FormResult:
    """Read a multipart form, streaming the `file_field` part into the sink `open_sink` returns.

    Raises:
        UnsupportedMediaTypeError: not multipart/form-data.
        PayloadTooLargeError: the body or the file is over its limit (the sink stores nothing).
        InvalidRequestError: malformed form, unknown or repeated field.
    """
    boundary = _boundary(request)
    length = _check_length(request, max_file_bytes + FORM_OVERHEAD)
    parser = PushMultipartParser(
        boundary, content_length=length, max_header_size=MAX_PART_HEADER_BYTES, max_header_count=MAX_PART_HEADERS
    )
    error: Exception | None = None
    async with anyio.create_task_group() as task_group:
        reader = _FormReader(
            file_field=file_field,
            text_fields=text_fields,
            max_file_bytes=max_file_bytes,
            open_sink=open_sink,
            task_group=task_group,
        )
        try:
            await _pump(request, parser, reader)
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group's ExceptionGroup
            error = exc
            await reader.abort(exc)
        except BaseException:  # cancelled: the put thread must still end, storing nothing
            reader.cancel()
            raise
    if error is not None:
        raise error
    return reader.result


async def _pump(request: Request[Any, Any, Any], parser: PushMultipartParser, reader: _FormReader) -> None:
    try:
        async for chunk in request.stream():
            if chunk:
                await _feed(parser, chunk, reader)
        await _feed(parser, b"", reader)
    except ParserLimitReached as exc:  # a header line or count past the limits: a 100 KB filename, say
        field = reader.file_field
        raise InvalidRequestError(
            f"A part of the multipart/form-data body has headers over the limits ({exc}): each part, the "
            f"'{field}' part included, may carry at most {MAX_PART_HEADERS} headers of up to "
            f"{MAX_PART_HEADER_BYTES} bytes each (its filename included).",
            param=field,
            code="invalid_value",
        ) from exc
    except MultipartError as exc:
        raise InvalidRequestError(f"Malformed multipart/form-data body: {exc}", code="invalid_value") from exc
    if not parser.closed:
        raise InvalidRequestError("The multipart/form-data body ended early.", code="invalid_value")


async def _feed(parser: PushMultipartParser, chunk: bytes, reader: _FormReader) -> None:
    for event in parser.parse(chunk):
        if isinstance(event, MultipartSegment):
            await reader.on_segment(event)
        elif event is None:
            await reader.on_end()
        else:
            await reader.on_data(bytes(event))

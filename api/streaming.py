"""Bridges between the async request/response and the sync stores, with bounded memory.

`ThreadedSink` feeds chunks from the event loop to a sync consumer (`BlobStore.put`) running in a worker
thread, through a small bounded channel: memory stays at a few MiB whatever the body size, and the bytes are
written once. A consumer that stops early (a bad first line) stops the producer at its next write.
"""

from __future__ import annotations

import collections
import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator

    from anyio.abc import TaskGroup

T = TypeVar("T")

COALESCE_BYTES = 1024 * 1024
CHANNEL_DEPTH = 4
ALONGSIDE_DEPTH = 4


class SinkStopped(Exception):  # noqa: N818 - reads as the event
    """The consumer finished or failed before the producer did."""


class ThreadedSink(Generic[T]):
    """Run `consume(chunks)` in a worker thread and feed it chunks from async code."""

    def __init__(self, consume: Callable[[Iterator[bytes]], T]) -> None:
        """Prepare the channel; call `start(task_group)` before the first `write`."""
        self._consume = consume
        self._send, self._recv = anyio.create_memory_object_stream[Any](CHANNEL_DEPTH)
        self._parts: list[bytes] = []
        self._buffered = 0
        self._done = anyio.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def start(self, task_group: TaskGroup) -> None:
        """Start the consumer thread in `task_group`."""
        task_group.start_soon(self._run)

    async def _run(self) -> None:
        try:
            self._result = await anyio.to_thread.run_sync(self._consume, self._chunks())
        except Exception as exc:  # noqa: BLE001 - handed to the producer, which re-raises it
            self._error = exc
        finally:
            self._recv.close()
            self._done.set()

    def _chunks(self) -> Iterator[bytes]:
        while True:
            try:
                item = anyio.from_thread.run(self._recv.receive)
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def write(self, chunk: bytes) -> None:
        """Queue `chunk` (coalesced to about 1 MiB). Raises the consumer's error if it stopped early."""
        self._parts.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= COALESCE_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if not self._parts:
            return
        # One copy at most: a chunk that is already large enough goes as it is.
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts, self._buffered = [], 0
        try:
            await self._send.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._done.wait()
            raise self._error or SinkStopped() from None

    async def finish(self) -> T:
        """Signal the end of input and return the consumer's result (or raise its error)."""
        await self._flush()
        await self._send.aclose()
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    async def abort(self, error: BaseException) -> None:
        """Make the consumer fail with `error` (its put then stores nothing) and wait for it."""
        self._parts, self._buffered = [], 0
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._send.send(error)
        await self._send.aclose()
        await self._done.wait()


async def iterate_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Yield a sync chunk iterator's items from async code, each `next` in a worker thread.

    The iterator is closed however the loop ends (a client that disconnects mid-download included), so
    the file or the S3 connection behind it is released at once.
    """
    sentinel = object()
    try:
        while True:
            item = await anyio.to_thread.run_sync(next, chunks, sentinel)
            if item is sentinel:
                return
            yield item  # type: ignore[misc]
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await anyio.to_thread.run_sync(close)


def consume_alongside(chunks: Iterable[bytes], consume: Callable[[bytes], None]) -> Iterator[bytes]:
    """Yield `chunks` while `consume` sees each of them, in order, on a thread of its own.

    The line checker holds the GIL while hashing and writing a blob release it: run side by side they
    overlap instead of taking turns. At most `ALONGSIDE_DEPTH` chunks wait for `consume`. Its first error is
    raised here, at the latest after the last chunk was yielded and before this generator returns, so a put
    reading it fails before it commits.
    """
    pending: collections.deque[Future[None]] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="consume-alongside")
    try:
        for chunk in chunks:
            pending.append(pool.submit(consume, chunk))
            while pending and (len(pending) > ALONGSIDE_DEPTH or pending[0].done()):
                pending.popleft().result()
            yield chunk
        while pending:
            pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

"""Bridges between the async request/response and the sync stores, with bounded memory.

`ThreadedSink` feeds chunks from the event loop to a sync consumer (`BlobStore.put`) running in a worker
thread, through a small bounded queue: memory stays at a few MiB whatever the body size, and the bytes are
written once. A consumer that stops early (a bad first line) stops the producer at its next write.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
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


_END = object()


class ThreadedSink(Generic[T]):
    """Run `consume(chunks)` in a worker thread and feed it chunks from async code.

    The chunks pass through a bounded queue guarded by a lock: the thread takes them without a trip through the
    event loop, and the loop hears from the thread only when the producer is waiting for room (the queue was full)
    and once the consumer has ended.
    """

    def __init__(self, consume: Callable[[Iterator[bytes]], T]) -> None:
        """Prepare the queue; call `start(task_group)` before the first `write`."""
        self._consume = consume
        self._items: collections.deque[Any] = collections.deque()
        self._ready = threading.Condition()  # its lock guards `_items`, `_room` and `_stopped`
        self._room: asyncio.Future[None] | None = None  # set while the producer waits for the queue to drain
        self._stopped = False  # the consumer ended: nothing more is queued
        self._loop: asyncio.AbstractEventLoop | None = None
        self._parts: list[bytes] = []
        self._buffered = 0
        self._done = anyio.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def start(self, task_group: TaskGroup) -> None:
        """Start the consumer thread in `task_group`."""
        self._loop = asyncio.get_running_loop()
        task_group.start_soon(self._run)

    async def _run(self) -> None:
        try:
            self._result = await anyio.to_thread.run_sync(self._consume, self._chunks())
        except Exception as exc:  # noqa: BLE001 - handed to the producer, which re-raises it
            self._error = exc
        finally:
            with self._ready:
                self._stopped = True
                self._items.clear()
                room, self._room = self._room, None
            _release(room)
            self._done.set()

    def _chunks(self) -> Iterator[bytes]:
        while True:
            with self._ready:
                while not self._items:
                    self._ready.wait()
                item = self._items.popleft()
                room, self._room = self._room, None
            if room is not None:
                self._loop.call_soon_threadsafe(_release, room)  # type: ignore[union-attr]
            if item is _END:
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
        while True:
            with self._ready:
                if self._stopped:
                    break
                if len(self._items) < CHANNEL_DEPTH:
                    self._items.append(data)
                    self._ready.notify()
                    return
                room = self._room = self._loop.create_future()  # type: ignore[union-attr]
            await room
        await self._done.wait()
        raise self._error or SinkStopped()

    def _close(self, last: object) -> None:
        """Queue `last` past the bound; an error also drops the chunks still queued."""
        with self._ready:
            if self._stopped:
                return
            if last is not _END:
                self._items.clear()
            self._items.append(last)
            self._ready.notify()

    async def finish(self) -> T:
        """Signal the end of input and return the consumer's result (or raise its error)."""
        await self._flush()
        self._close(_END)
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    async def abort(self, error: BaseException) -> None:
        """Make the consumer fail with `error` (its put then stores nothing) and wait for it."""
        self.cancel(error)
        await self._done.wait()

    def cancel(self, error: BaseException) -> None:
        """Make the consumer fail with `error` without waiting: for a producer that is being cancelled."""
        self._parts, self._buffered = [], 0
        self._close(error)


def _release(room: asyncio.Future[None] | None) -> None:
    if room is not None and not room.done():
        room.set_result(None)


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

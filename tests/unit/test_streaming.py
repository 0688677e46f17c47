"""Streaming bridges: `consume_alongside` and `ThreadedSink`, each feeding a consumer on a thread of its own.

`consume_alongside`: the consumer sees every chunk in order, and its error stops the reader. `ThreadedSink`: the
put thread takes queued chunks without the event loop, and a request that is cancelled or whose client goes away
mid-file still ends the put thread, which stores nothing.
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tunewright.api.forms import read_form
from tunewright.api.streaming import (
    ALONGSIDE_DEPTH,
    CHANNEL_DEPTH,
    COALESCE_BYTES,
    SinkStopped,
    ThreadedSink,
    consume_alongside,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

CHUNKS = [bytes([index]) * 10 for index in range(20)]


def test_every_chunk_is_yielded_and_consumed_in_order_on_another_thread() -> None:
    seen: list[bytes] = []
    threads: set[int] = set()

    def consume(chunk: bytes) -> None:
        threads.add(threading.get_ident())
        seen.append(chunk)

    assert list(consume_alongside(iter(CHUNKS), consume)) == CHUNKS
    assert seen == CHUNKS
    assert threads and threading.get_ident() not in threads


def test_an_error_on_the_last_chunk_is_raised_before_the_reader_ends() -> None:
    def consume(chunk: bytes) -> None:
        if chunk == CHUNKS[-1]:
            raise ValueError("bad line")

    reader = consume_alongside(iter(CHUNKS), consume)
    with pytest.raises(ValueError, match="bad line"):
        for _ in reader:
            pass


def test_an_early_error_stops_the_reader_within_the_depth() -> None:
    def consume(chunk: bytes) -> None:
        if chunk == CHUNKS[0]:
            raise ValueError("bad first line")

    yielded = []
    with pytest.raises(ValueError, match="bad first line"):
        for chunk in consume_alongside(iter(CHUNKS), consume):
            yielded.append(chunk)
    assert len(yielded) <= ALONGSIDE_DEPTH + 1


def test_closing_the_reader_early_leaves_no_thread_behind() -> None:
    before = threading.active_count()
    reader = consume_alongside(iter(CHUNKS), lambda _chunk: None)
    next(reader)
    reader.close()
    assert threading.active_count() == before


def run_in_thread(main: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """`anyio.run(main)` on a daemon thread: a hang fails the test instead of stopping the suite."""
    returned: list[Any] = []
    raised: list[BaseException] = []

    def target() -> None:
        try:
            returned.append(anyio.run(main))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the event loop did not finish: the consumer thread never ended"
    if raised:
        raise raised[0]
    return returned[0]


def test_the_consumer_takes_queued_chunks_while_the_event_loop_is_busy() -> None:
    taken: list[bytes] = []
    started = threading.Event()

    def consume(chunks: Iterator[bytes]) -> int:
        started.set()
        for chunk in chunks:
            taken.append(chunk)
        return len(taken)

    async def main() -> tuple[int, int]:
        async with anyio.create_task_group() as task_group:
            sink: ThreadedSink[int] = ThreadedSink(consume)
            sink.start(task_group)
            while not started.is_set():
                await anyio.sleep(0.01)
            for index in range(CHANNEL_DEPTH):
                await sink.write(bytes([index]) * COALESCE_BYTES)
            deadline = time.monotonic() + 5
            while len(taken) < CHANNEL_DEPTH and time.monotonic() < deadline:
                time.sleep(0.01)  # the event loop is busy: it hands nothing over
            while_busy = len(taken)
            return while_busy, await sink.finish()

    assert run_in_thread(main) == (CHANNEL_DEPTH, CHANNEL_DEPTH)


class StalledRequest:
    """A multipart request whose client sends the start of a file part, then `then` (stall or disconnect)."""

    def __init__(self, chunks: int, then: Callable[[], Awaitable[None]]) -> None:
        self.headers = {"content-type": "multipart/form-data; boundary=b", "content-length": str(64 * COALESCE_BYTES)}
        self.chunks = chunks
        self.then = then

    async def stream(self) -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="f.jsonl"\r\n\r\n'
        for _ in range(self.chunks):
            yield b"x" * COALESCE_BYTES
        await self.then()


def read_into_slow_consumer(
    request: StalledRequest, *, cancel_after: float = math.inf
) -> tuple[list[str], BaseException | None]:
    """Read a form from `request` into a consumer that lets the queue fill for 0.3 s; how each side ended."""
    consumer: list[str] = []
    release = threading.Event()

    def consume(chunks: Iterator[bytes]) -> None:
        release.wait(5)  # the queue fills and the producer waits for room
        try:
            for _ in chunks:
                pass
        except Exception as exc:  # the put fails: it stores nothing
            consumer.append(type(exc).__name__)
            raise
        consumer.append("finished")

    async def main() -> BaseException | None:
        async def let_go() -> None:
            await anyio.sleep(0.3)
            release.set()

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(let_go)
            with anyio.move_on_after(cancel_after):  # the server gives up on the request
                try:
                    await read_form(
                        request,  # type: ignore[arg-type]
                        file_field="file",
                        text_fields=(),
                        max_file_bytes=1 << 40,
                        open_sink=lambda _fields, _name: ThreadedSink(consume),
                    )
                except Exception as exc:  # noqa: BLE001 - returned to the test
                    return exc
        return None

    return consumer, run_in_thread(main)


def test_a_request_cancelled_while_the_queue_is_full_ends_the_consumer_storing_nothing() -> None:
    # the producer is waiting for room when the request is cancelled
    consumer, error = read_into_slow_consumer(StalledRequest(4 * CHANNEL_DEPTH, anyio.sleep_forever), cancel_after=0.2)
    assert consumer == [SinkStopped.__name__]
    assert error is None


def test_a_client_that_disconnects_mid_file_ends_the_consumer_storing_nothing() -> None:
    async def disconnect() -> None:
        raise OSError("client disconnected")

    consumer, error = read_into_slow_consumer(StalledRequest(CHANNEL_DEPTH, disconnect))  # with the queue full
    assert consumer == ["OSError"]
    assert isinstance(error, OSError)

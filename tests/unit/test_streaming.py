"""`consume_alongside`: a consumer on its own thread sees every chunk in order, and its error stops the reader."""

from __future__ import annotations

import threading

import pytest

from tunewright.api.streaming import ALONGSIDE_DEPTH, consume_alongside

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

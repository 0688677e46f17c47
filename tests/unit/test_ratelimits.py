"""Rate-limit arithmetic: GCRA over several limits, OpenAI's duration format, settling an estimate."""

from __future__ import annotations

import asyncio

import pytest

from tunewright.api.ratelimits.counters import Limit, MemoryCounters, gcra
from tunewright.api.ratelimits.limiter import Admission, duration, retry_headers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def take(counters: MemoryCounters, *limits: Limit):
    return asyncio.run(counters.take(limits))


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0s"), (20, "20ms"), (999, "999ms"), (1000, "1s"), (1500, "1.5s"), (59_999, "59.999s"),
     (60_000, "1m0s"), (360_000, "6m0s"), (61_250, "1m1.25s"), (3_723_000, "1h2m3s")],
)  # fmt: skip
def test_durations_are_written_as_openai_writes_them(ms: int, text: str) -> None:
    assert duration(ms) == text


def test_retry_headers_round_up_to_whole_seconds() -> None:
    assert retry_headers(1) == {"retry-after": "1", "retry-after-ms": "1"}
    assert retry_headers(20_001) == {"retry-after": "21", "retry-after-ms": "20001"}


def test_a_full_bucket_admits_its_limit_at_once_then_one_per_interval() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    rpm = Limit("k", 3, 60_000, 1)
    outcomes = [take(counters, rpm) for _ in range(4)]
    assert [o.admitted for o in outcomes] == [True, True, True, False]
    assert [o.remaining[0] for o in outcomes] == [2, 1, 0, 0]
    assert [o.reset_ms[0] for o in outcomes] == [20_000, 40_000, 60_000, 60_000]
    assert (outcomes[3].refused, outcomes[3].used, outcomes[3].retry_ms) == (0, 3, 20_000)
    clock.now += 19.9
    assert not take(counters, rpm).admitted
    clock.now += 0.1  # one interval (20 s) after the first take: one unit is back
    assert take(counters, rpm).admitted


def test_limits_are_taken_all_or_nothing_and_the_longest_wait_is_reported() -> None:
    counters = MemoryCounters(Clock())
    requests, tokens = Limit("r", 10, 60_000, 1), Limit("t", 100, 60_000, 60)
    assert take(counters, requests, tokens).admitted
    refused = take(counters, requests, tokens)
    assert (refused.admitted, refused.refused, refused.used) == (False, 1, 60)
    assert refused.retry_ms == 12_000  # 20 more tokens must come back, at 100 a minute
    assert refused.remaining == [9, 40]  # nothing was taken from the request limit
    assert take(counters, requests, Limit("t", 100, 60_000, 40)).remaining == [8, 0]


def test_inexact_intervals_still_admit_the_whole_limit() -> None:
    counters = MemoryCounters(Clock())
    seven = Limit("k", 7, 60_000, 1)
    assert [take(counters, seven).admitted for _ in range(8)] == [True] * 7 + [False]


def test_gcra_never_reports_negative_room() -> None:
    outcome, _ = gcra([Limit("k", 5, 1000, 3)], [5000.0], 1000.0)
    assert (outcome.admitted, outcome.remaining, outcome.used) == (False, [0], 5)


def test_an_admission_gives_back_what_the_request_did_not_use_once() -> None:
    counters = MemoryCounters(Clock())
    tokens = Limit("t", 1000, 60_000, 300)
    outcome = take(counters, tokens)
    admission = Admission(counters, tokens, outcome)
    asyncio.run(admission.settle(120))
    asyncio.run(admission.settle(0))  # settled already: nothing more comes back
    assert take(counters, Limit("t", 1000, 60_000, 0)).remaining == [880]

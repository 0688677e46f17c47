"""Rate-limit counters: GCRA (the generic cell rate algorithm) over one or more limits, taken all or nothing.

A limit of `limit` units per `period_ms` replenishes continuously, one unit every `period_ms / limit`, up to a
full bucket of `limit` (what OpenAI's `x-ratelimit-reset-*` headers describe: the time until the bucket is full
again). GCRA keeps one number per counter, its theoretical arrival time (TAT): the moment the bucket would be
full if nothing more were taken. Taking `cost` units moves it `cost * period_ms / limit` later, and is refused
when that would put it more than `period_ms` ahead of now. So over any stretch of `t` ms at most
`limit + limit * t / period_ms` units are admitted, and never more than `limit` at once.

Two implementations of `Counters`: `MemoryCounters` here (one process: the embedded mode) and `RedisCounters`
(`redis_counters.py`, shared by every API process), which runs the same arithmetic in a Lua script.
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Protocol

import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

EPSILON_MS = 0.001
"""Slack for float rounding: `limit` takes of one unit fit in a period even when `period / limit` is inexact."""
_MEMORY_MAX_KEYS = 100_000


class Limit(msgspec.Struct, frozen=True):
    """One counter to take `cost` units from: at most `limit` units per `period_ms`."""

    key: str
    limit: int
    period_ms: int
    cost: int


class Outcome(msgspec.Struct, kw_only=True):
    """What taking from a set of limits gave.

    `remaining[i]` and `reset_ms[i]` describe limit i after the take (or as it stands, if refused): whole units
    left, and milliseconds until its bucket is full. When refused, `refused` is the index of the limit that
    waits longest, `retry_ms` how long until the request would fit, and `used` how many of its units are taken.
    `checked` is False when the counters could not be reached and the request was let through unchecked.
    """

    admitted: bool
    remaining: list[int]
    reset_ms: list[int]
    refused: int = -1
    retry_ms: int = 0
    used: int = 0
    checked: bool = True


class Counters(Protocol):
    """Where the counters live: this process, or Redis for every process."""

    async def take(self, limits: Sequence[Limit]) -> Outcome:
        """Take every limit's cost, or none of them if any would go over; never raises."""
        ...

    async def give_back(self, limit: Limit, amount: int) -> None:
        """Return `amount` units taken earlier (an estimate that proved too high); never raises."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def unchecked(limits: Sequence[Limit]) -> Outcome:
    """The outcome when the counters cannot be reached: admitted, full buckets (fail open)."""
    return Outcome(
        admitted=True, remaining=[limit.limit for limit in limits], reset_ms=[0] * len(limits), checked=False
    )


def gcra(limits: Sequence[Limit], tats: Sequence[float], now: float) -> tuple[Outcome, list[float]]:
    """The outcome of taking `limits` whose TATs are `tats` at `now` (ms), and the TATs to store if admitted.

    The Lua script in `redis_counters.py` is this function; keep them in step.
    """
    new_tats: list[float] = []
    refused, retry, used = -1, 0.0, 0
    for index, (limit, stored) in enumerate(zip(limits, tats, strict=True)):
        interval = limit.period_ms / limit.limit
        tat = max(stored, now)
        new_tat = tat + limit.cost * interval
        wait = new_tat - limit.period_ms - now
        if wait > EPSILON_MS and wait > retry:
            refused, retry = index, wait
            used = limit.limit - _whole(limit.period_ms - (tat - now), interval)
        new_tats.append(new_tat)
    admitted = refused < 0
    remaining, reset = [], []
    for limit, stored, new_tat in zip(limits, tats, new_tats, strict=True):
        tat = new_tat if admitted else max(stored, now)
        remaining.append(_whole(limit.period_ms - (tat - now), limit.period_ms / limit.limit))
        reset.append(math.ceil(tat - now))
    outcome = Outcome(
        admitted=admitted, remaining=remaining, reset_ms=reset, refused=refused, retry_ms=math.ceil(retry), used=used
    )
    return outcome, new_tats


def room(limit: Limit, debt_ms: float) -> int:
    """Whole units of `limit` left when its bucket is `debt_ms` from full."""
    return _whole(limit.period_ms - debt_ms, limit.period_ms / limit.limit)


def _whole(room_ms: float, interval: float) -> int:
    """Whole units that fit in `room_ms` (never negative)."""
    return max(0, math.floor(room_ms / interval + EPSILON_MS))


class MemoryCounters:
    """Counters in this process's memory: exact for one API process, per process when there are several."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Start empty; `clock` gives seconds (tests pass a fake one)."""
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()

    async def take(self, limits: Sequence[Limit]) -> Outcome:
        """See `Counters.take`."""
        now = self._clock() * 1000
        with self._lock:
            outcome, new_tats = gcra(limits, [self._tats.get(limit.key, now) for limit in limits], now)
            if outcome.admitted:
                if len(self._tats) >= _MEMORY_MAX_KEYS:
                    self._prune(now)
                for limit, tat in zip(limits, new_tats, strict=True):
                    self._tats[limit.key] = tat
        return outcome

    async def give_back(self, limit: Limit, amount: int) -> None:
        """See `Counters.give_back`."""
        now = self._clock() * 1000
        with self._lock:
            tat = self._tats.get(limit.key)
            if tat is not None:
                self._tats[limit.key] = max(now, tat - amount * limit.period_ms / limit.limit)

    async def close(self) -> None:
        """Nothing to release."""

    def _prune(self, now: float) -> None:
        """Forget full buckets (a TAT in the past is the same as no entry)."""
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}

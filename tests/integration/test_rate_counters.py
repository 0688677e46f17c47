"""Rate-limit counters: the in-process and the Redis implementation behave the same; Redis failures fail open.

The Redis cases run on the shared test Redis under a key prefix of their own, and on private `redis-server`s
that the tests kill and restart.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from tunewright.api.ratelimits.counters import Limit, MemoryCounters
from tunewright.api.ratelimits.redis_counters import RedisCounters

if TYPE_CHECKING:
    from fixtures.redis import PrivateRedis

pytestmark = pytest.mark.integration


class Calls:
    def __init__(self) -> None:
        self.errors = 0
        self.unchecked = 0

    def error(self) -> None:
        self.errors += 1

    def skip(self) -> None:
        self.unchecked += 1


def redis_counters(url: str, prefix: str = "tw-test", calls: Calls | None = None, **kwargs: Any) -> RedisCounters:
    calls = calls or Calls()
    options = {"timeout_s": 0.2, "retry_s": 1.0, **kwargs}
    return RedisCounters(url, prefix=prefix, on_error=calls.error, on_unchecked=calls.skip, **options)


@pytest.fixture(params=["memory", "redis"])
def counters(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryCounters()
    return redis_counters(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))


def run(counters: Any, *calls: Any) -> list[Any]:
    """Run counter calls (`(method, args)`) in order on one event loop, then close the counters."""

    async def drive() -> list[Any]:
        try:
            return [await getattr(counters, name)(*args) for name, *args in calls]
        finally:
            await counters.close()

    return asyncio.run(drive())


def test_both_counters_take_refuse_and_give_back_alike(counters: Any) -> None:
    rpm, tpm = Limit("rpm", 2, 60_000, 1), Limit("tpm", 100, 60_000, 40)
    first, second, third, _, after = run(
        counters,
        ("take", [rpm, tpm]),
        ("take", [rpm, tpm]),
        ("take", [rpm, tpm]),
        ("give_back", tpm, 30),
        ("take", [Limit("tpm", 100, 60_000, 0)]),
    )
    assert (first.admitted, first.remaining, first.checked) == (True, [1, 60], True)
    assert (second.admitted, second.remaining) == (True, [0, 20])
    assert (third.admitted, third.refused, third.used) == (False, 0, 2)
    assert 29_000 < third.retry_ms <= 30_000
    assert 59_000 < third.reset_ms[0] <= 60_000
    assert 49 <= after.remaining[0] <= 51  # 30 given back (and a little replenished)


def test_both_counters_replenish_continuously(counters: Any) -> None:
    fast = Limit("fast", 2, 400, 1)  # one unit back every 200 ms

    async def drive() -> list[bool]:
        try:
            admitted = [(await counters.take([fast])).admitted for _ in range(3)]
            await asyncio.sleep(0.25)
            admitted.append((await counters.take([fast])).admitted)
            return admitted
        finally:
            await counters.close()

    assert asyncio.run(drive()) == [True, True, False, True]


def test_counters_expire_in_redis_once_their_bucket_is_full(redis_url: str, redis_prefix: str) -> None:
    run(redis_counters(redis_url, redis_prefix), ("take", [Limit("k", 10, 60_000, 4)]))
    ttl = redis.Redis.from_url(redis_url).pttl(f"{redis_prefix}:k")
    assert 23_000 < ttl <= 24_001  # 4 of 10 a minute come back in 24 s


def test_a_closed_port_fails_open_at_once_and_the_breaker_spares_redis(tmp_path: Any) -> None:
    calls = Calls()
    counters = redis_counters("redis://127.0.0.1:9/0", calls=calls, retry_s=60.0)
    limits = [Limit("k", 1, 60_000, 1)]
    started = time.monotonic()
    outcomes = run(counters, *[("take", limits)] * 20)
    assert time.monotonic() - started < 1.0
    assert all(o.admitted and not o.checked for o in outcomes)
    assert (calls.errors, calls.unchecked) == (1, 20)  # one try, then the breaker answers


def test_a_killed_redis_fails_open_and_a_restarted_one_is_used_again(private_redis: PrivateRedis) -> None:
    calls = Calls()
    limit = [Limit("k", 1, 60_000, 1)]

    async def drive() -> list[Any]:
        counters = redis_counters(private_redis.url, calls=calls, retry_s=0.3)
        try:
            outcomes = [await counters.take(limit), await counters.take(limit)]  # admitted, then refused
            private_redis.stop()
            outcomes += [await counters.take(limit) for _ in range(5)]
            restarted = type(private_redis)(private_redis.process_dir, port=private_redis.port)
            try:
                await asyncio.sleep(0.35)
                outcomes += [await counters.take(limit), await counters.take(limit)]
            finally:
                restarted.stop()
            return outcomes
        finally:
            await counters.close()

    outcomes = asyncio.run(drive())
    assert [(o.admitted, o.checked) for o in outcomes[:2]] == [(True, True), (False, True)]
    assert all(o.admitted and not o.checked for o in outcomes[2:7])
    # The new server is empty (nothing kept on disk) and has no script cached: the script is loaded again.
    assert [(o.admitted, o.checked) for o in outcomes[7:]] == [(True, True), (False, True)]
    assert calls.errors >= 1
    assert calls.unchecked == 5

"""Leases on the Redis counters: processes spend slices of a limit locally and still share it exactly.

Each `LeasedCounters` stands for one API process (its own connections and slices); they share the test Redis under
a key prefix of the test's own. Redis keeps time itself, so the tests bound what it refills meanwhile rather than
stopping its clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from tunewright.api.ratelimits.counters import Limit
from tunewright.api.ratelimits.leases import MIN_SLICE, LeasedCounters
from tunewright.api.ratelimits.redis_counters import RedisCounters

if TYPE_CHECKING:
    from fixtures.redis import PrivateRedis

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


class Counted(RedisCounters):
    """Redis counters that count their lease commands and failures."""

    def __init__(self, url: str, prefix: str = "tw-test", **kwargs: Any) -> None:
        self.leases = self.errors = self.unchecked = 0
        options = {"timeout_s": 0.2, "retry_s": 1.0, **kwargs}
        super().__init__(url, prefix=prefix, on_error=self._error, on_unchecked=self._skip, **options)

    def _error(self) -> None:
        self.errors += 1

    def _skip(self) -> None:
        self.unchecked += 1

    async def lease(self, *args: Any) -> Any:
        self.leases += 1
        return await super().lease(*args)


def process(url: str, prefix: str, lease_s: float = 1.0, **kwargs: Any) -> tuple[LeasedCounters, Counted]:
    """One "process": leased counters and the Redis counters under them."""
    counted = Counted(url, prefix, **kwargs)
    return LeasedCounters(counted, lease_s=lease_s), counted


async def ramp(counters: LeasedCounters, limit: Limit) -> int:
    """Take from `limit` until the process holds a full slice (`cap`); how many requests that took."""
    for taken in range(1, 1000):
        assert (await counters.take([limit])).admitted
        if counters.held(limit.key) == counters.cap(limit):
            return taken
    raise AssertionError(f"never held a full slice: {counters.held(limit.key)}")


def stored_tat(url: str, key: str) -> float:
    value = redis.Redis.from_url(url).get(key)
    assert value is not None
    return float(value)


def test_two_leasing_processes_never_admit_more_than_the_limit_together(redis_url: str, redis_prefix: str) -> None:
    limit = Limit("key", 600, 60_000, 1)  # a slice of at most 10 (what 1 s refills)

    async def drive() -> tuple[list[int], float, list[int]]:
        (a, a_redis), (b, b_redis) = process(redis_url, redis_prefix), process(redis_url, redis_prefix)
        admitted = [0, 0]
        started = time.monotonic()
        try:
            for _ in range(80):  # 16 concurrent requests a turn, 8 in each process
                outcomes = await asyncio.gather(*[(a if i % 2 else b).take([limit]) for i in range(16)])
                for i, outcome in enumerate(outcomes):
                    assert outcome.checked
                    admitted[i % 2] += outcome.admitted
            return admitted, time.monotonic() - started, [a_redis.leases, b_redis.leases]
        finally:
            await a.close()
            await b.close()

    admitted, elapsed, commands = asyncio.run(drive())
    refilled = math.ceil(limit.limit * elapsed * 1000 / limit.period_ms)
    assert sum(admitted) <= limit.limit + refilled  # nothing was held when the stretch began: no more than GCRA
    assert sum(admitted) >= limit.limit - 2 * 10  # at most a slice per process left unspent at the end
    assert min(admitted) > 0  # both processes admitted some
    # Most requests never reached Redis (one renewal per key in flight per process, refusals remembered).
    assert sum(commands) < 1280 / 5, commands


def test_a_slice_left_unspent_goes_back_at_expiry_or_close_for_another_process(
    redis_url: str, redis_prefix: str
) -> None:
    limit = Limit("k", 20_000_000, DAY_MS, 1)  # refills 0.23 a ms: 57 in 0.25 s, the slice's cap
    stored = f"{redis_prefix}:k"

    async def drive() -> None:
        a, _ = process(redis_url, redis_prefix, lease_s=0.25)
        other = Counted(redis_url, redis_prefix)  # another process, asking Redis on every request
        try:
            # A whole bucket but 1,000 units is gone (the key then outlives the test).
            assert (await other.take([Limit("k", limit.limit, DAY_MS, limit.limit - 1000)])).admitted
            await ramp(a, limit)
            held = a.held("k")
            assert held == a.cap(limit) >= MIN_SLICE
            before = stored_tat(redis_url, stored)
            deadline = time.monotonic() + 0.25 + 0.5
            while a.held("k"):  # the slice expires at 0.25 s and goes back
                assert time.monotonic() < deadline, "the slice was not given back"
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # the give-back is in flight
            assert before - stored_tat(redis_url, stored) == pytest.approx(held * DAY_MS / limit.limit, abs=0.01)

            await ramp(a, limit)
            held = a.held("k")
            left = (await other.take([Limit("k", limit.limit, DAY_MS, 0)])).remaining[0]
            wanted = Limit("k", limit.limit, DAY_MS, left + held)
            assert not (await other.take([wanted])).admitted  # the slice is a's alone while a holds it
            await a.close()  # closing gives it back at once
            assert (await other.take([wanted])).admitted
        finally:
            await a.close()
            await other.close()

    asyncio.run(drive())


def test_the_headers_count_the_unspent_slice_as_remaining(redis_url: str, redis_prefix: str) -> None:
    limit = Limit("k", 20_000_000, DAY_MS, 1)

    async def drive() -> None:
        a, a_redis = process(redis_url, redis_prefix)
        other = Counted(redis_url, redis_prefix)
        try:
            await ramp(a, limit)
            commands = a_redis.leases
            first, second = await a.take([limit]), await a.take([limit])
            taken = time.monotonic()
            assert a_redis.leases == commands  # both from the slice
            assert first.remaining[0] - second.remaining[0] == 1
            # What Redis says remains (the slice is taken there), plus what this process holds of it.
            in_redis = await other.take([Limit("k", limit.limit, DAY_MS, 0)])
            elapsed_ms = (time.monotonic() - taken) * 1000  # Redis's reset is that much nearer by its answer
            assert abs(in_redis.remaining[0] + a.held("k") - second.remaining[0]) <= 1
            slice_ms = a.held("k") * DAY_MS / limit.limit
            assert -elapsed_ms - 5 <= in_redis.reset_ms[0] - slice_ms - second.reset_ms[0] <= 5
        finally:
            await a.close()
            await other.close()

    asyncio.run(drive())


def test_tokens_given_back_go_into_the_slice_or_to_redis(redis_url: str, redis_prefix: str) -> None:
    tokens = Limit("tpm", 6_000_000, 60_000, 100)  # a slice of at most 100,000 tokens; 100 come back a ms

    async def drive() -> None:
        a, a_redis = process(redis_url, redis_prefix)
        try:
            await ramp(a, tokens)
            held, commands = a.held("tpm"), a_redis.leases
            started = time.monotonic()
            before = (await a.take([tokens])).remaining[0]
            await a.give_back(tokens, 7)  # room in the slice: kept here, and counted as remaining again
            after = (await a.take([Limit("tpm", tokens.limit, 60_000, 0)])).remaining[0]
            refilled = math.ceil((time.monotonic() - started) * 1000 * 100) + 1
            assert a.held("tpm") == held - 100 + 7
            assert 7 <= after - before <= 7 + refilled
            assert a_redis.leases == commands
            tat = stored_tat(redis_url, f"{redis_prefix}:tpm")
            await a.give_back(tokens, a.cap(tokens))  # more than the slice may hold: straight to Redis
            assert a.held("tpm") == held - 100 + 7
            given_ms = a.cap(tokens) * 60_000 / tokens.limit
            assert tat - stored_tat(redis_url, f"{redis_prefix}:tpm") == pytest.approx(given_ms, abs=0.01)
        finally:
            await a.close()

    asyncio.run(drive())


def test_small_limits_are_never_leased_and_refusals_are_remembered_briefly(redis_url: str, redis_prefix: str) -> None:
    limit = Limit("k", 5, 60_000, 1)  # refills 0.08 in 1 s: no slice

    async def drive() -> None:
        a, a_redis = process(redis_url, redis_prefix, lease_s=0.2)
        try:
            admitted = [(await a.take([limit])).admitted for _ in range(5)]
            assert admitted == [True] * 5
            assert (a_redis.leases, a.held("k")) == (5, 0)  # every one asked Redis, as without leases
            refused = [await a.take([limit]) for _ in range(50)]
            assert not any(outcome.admitted for outcome in refused)
            assert a_redis.leases == 6  # the first refusal came from Redis, the others from memory
            assert [outcome.used for outcome in refused] == [5] * 50
            assert all(0 < outcome.retry_ms <= 12_000 for outcome in refused)
            assert refused[-1].retry_ms <= refused[0].retry_ms
            await asyncio.sleep(0.2)  # remembered for at most the lease duration
            assert not (await a.take([limit])).admitted
            assert a_redis.leases == 7
        finally:
            await a.close()

    asyncio.run(drive())


def test_a_changed_limit_is_leased_afresh(redis_url: str, redis_prefix: str) -> None:
    async def drive() -> None:
        a, a_redis = process(redis_url, redis_prefix)
        try:
            await ramp(a, Limit("k", 6000, 60_000, 1))
            commands = a_redis.leases
            raised = await a.take([Limit("k", 12_000, 60_000, 1)])
            assert raised.admitted
            assert a_redis.leases == commands + 1  # not from the old slice
            assert a.held("k") == 0  # a first request on the new limit: no slice yet
            assert 11_900 < raised.remaining[0] < 12_000
        finally:
            await a.close()

    asyncio.run(drive())


def test_a_closed_port_fails_open_with_leases(tmp_path: Any) -> None:
    a, a_redis = process("redis://127.0.0.1:9/0", "tw-test", retry_s=60.0)
    limit = Limit("k", 6000, 60_000, 1)

    async def drive() -> list[Any]:
        try:
            return [await a.take([limit]) for _ in range(20)]
        finally:
            await a.close()

    started = time.monotonic()
    outcomes = asyncio.run(drive())
    assert time.monotonic() - started < 1.0
    assert all(outcome.admitted and not outcome.checked for outcome in outcomes)
    assert (a_redis.errors, a_redis.unchecked) == (1, 20)


def test_a_killed_redis_leaves_the_slice_to_spend_then_fails_open(private_redis: PrivateRedis) -> None:
    limit = Limit("k", 20_000_000, DAY_MS, 1)

    async def drive() -> tuple[list[Any], int, Counted]:
        a, a_redis = process(private_redis.url, "tw-test", retry_s=0.3)
        try:
            await ramp(a, limit)
            held = a.held("k")
            private_redis.stop()
            outcomes = [await a.take([limit]) for _ in range(held + 5)]
            restarted = type(private_redis)(private_redis.process_dir, port=private_redis.port)
            try:
                await asyncio.sleep(0.35)
                outcomes.append(await a.take([limit]))
            finally:
                restarted.stop()
            return outcomes, held, a_redis
        finally:
            await a.close()

    outcomes, held, a_redis = asyncio.run(drive())
    assert all(outcome.admitted and outcome.checked for outcome in outcomes[:held])  # the slice, already taken
    assert all(outcome.admitted and not outcome.checked for outcome in outcomes[held:-1])  # then fail open
    assert (outcomes[-1].admitted, outcomes[-1].checked) == (True, True)  # the new server, script loaded again
    assert outcomes[-1].remaining[0] >= limit.limit - 1
    assert a_redis.errors >= 1
    assert a_redis.unchecked == 5


def test_a_request_takes_all_its_limits_from_slices_or_none(redis_url: str, redis_prefix: str) -> None:
    rpm, tpm = Limit("rpm", 6000, 60_000, 1), Limit("tpm", 6_000_000, 60_000, 100)
    rpd = Limit("rpd", 12, DAY_MS, 1)

    async def drive() -> None:
        a, a_redis = process(redis_url, redis_prefix)
        try:
            # A daily limit of 12 is never leased, so neither are the others of a request that takes it.
            assert all([(await a.take([rpm, tpm, rpd])).admitted for _ in range(5)])
            assert (a_redis.leases, a.held("rpm"), a.held("tpm")) == (5, 0, 0)
            for _ in range(200):  # without it, both are leased
                assert (await a.take([rpm, tpm])).admitted
            assert a_redis.leases < 5 + 20
            held = a.held("rpm")
            before = await a.take([rpm, Limit("tpm", tpm.limit, 60_000, 0)])
            refused = await a.take([rpm, Limit("tpm", tpm.limit, 60_000, tpm.limit)])
            assert (refused.admitted, refused.refused) == (False, 1)
            assert a.held("rpm") == held - 1  # the refused request took nothing
            assert 0 <= refused.remaining[0] - before.remaining[0] <= 1
        finally:
            await a.close()

    asyncio.run(drive())

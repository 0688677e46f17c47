"""Leases on the Redis counters: a busy process takes a slice of a limit in one command and spends it locally.

A round trip to Redis on every request is the cost of shared limits (bench/README.md, "Rate limiting"). With
`TUNEWRIGHT_REDIS_LEASE_S` (L, default 1 s) above 0, `LeasedCounters` wraps `RedisCounters`: when a request's
limits are not covered by what the process holds, one script (`LEASE_SCRIPT`) gives back what the process still
holds of them, takes the request's costs (all or none, as before) and, when admitted, up to an extra slice of
each limit for the process. The process then admits the next requests from its slices without asking Redis,
until a slice runs out or the lease is L old; at L a timer gives the unspent units back (as does closing).

- **Slice size.** Adaptive: what the process spent of that limit during its last lease, per second, times L
  (none on a key's first request or below `MIN_SLICE`), and at most what the limit refills in L:
  `floor(limit * L / period)` (`cap`). So a limit of 6,000 requests a minute is leased 100 at a time at most,
  and a limit that refills less than `MIN_SLICE` units in L (60 a minute, a daily limit of 12) is never leased:
  each of its requests goes to Redis, exactly as without leases. One renewal per key is in flight per process;
  requests that need it wait for it. A lease on a limit whose value changed is renewed.
- **Guarantee.** Every request admitted is charged in Redis before it is admitted (by the lease that covered
  it), and units given back are units no request spent. So over any stretch of t ms the processes together admit
  at most `limit + limit * t / period + H` units, where H is what they held unspent when the stretch began, and
  H ≤ processes * `cap`. Without leases H = 0, the bound counters.py gives; a stretch that begins with nothing
  held has that bound exactly. With a per-minute
  limit and L = 1 s, each process adds at most 1/60 of the limit. The price: a request can be refused while
  another process holds unspent units, for at most L (its slice goes back at L; if the process dies instead,
  what it held costs the others at most L of the limit's refill), and a process does not see the others'
  admissions from their slices until its next renewal, at most L later.
- **Headers.** Each lease keeps the counter's state as Redis last gave it, not counting the process's unspent
  slice, and advances it locally with each admission (GCRA on the local clock): `remaining` is what Redis said
  remained, plus the unspent slice, minus what this process admitted since; other processes' use since the last
  renewal (at most L ago) is not in it. `reset` likewise.
- **Refusals.** After Redis refuses a request, the process refuses requests no smaller on that limit without
  asking Redis, for min(the wait Redis gave, L), with that wait counted down: a client hammering past its limit
  costs one round trip per L, not one per request.
- **Redis failing.** The lease command fails open as the take does (`RedisCounters`); slices already held
  are still spent until they expire; a slice whose renewal failed is dropped (never spent twice).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING

from tunewright.api.ratelimits.counters import EPSILON_MS, Limit, Outcome, unchecked

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tunewright.api.ratelimits.redis_counters import Lease, RedisCounters

MIN_SLICE = 4
"""The smallest extra slice worth leasing: below, a lease would save little and cost a give-back at expiry."""
RATE_WINDOW_MIN = 0.1
"""Spending is measured over at least this share of L, so a short burst grows a slice at most tenfold."""
_MAX_LEASES = 100_000


class _Lease:
    """This process's state for one counter: its unspent slice and its local copy of the counter."""

    __slots__ = (
        "blocked_cost",
        "blocked_until",
        "blocked_used",
        "expires",
        "held",
        "interval",
        "key",
        "limit",
        "period_ms",
        "renewing",
        "retry_end",
        "since",
        "spent",
        "tat",
        "timer",
    )

    def __init__(self, limit: Limit, now: float) -> None:
        self.key = limit.key
        self.limit = limit.limit
        self.period_ms = limit.period_ms
        self.interval = limit.period_ms / limit.limit
        self.held = 0  # units taken in Redis, not yet spent
        self.tat = now  # when the bucket is full again, local clock (ms), not counting `held`
        self.expires = 0.0  # when `held` goes back to Redis
        self.since = now  # when the lease was taken: spending is measured from here
        self.spent = 0  # units spent since then
        self.renewing: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.blocked_until = 0.0  # requests of at least `blocked_cost` are refused locally until then
        self.blocked_cost = 0
        self.blocked_used = 0
        self.retry_end = 0.0  # when Redis said the refused request would fit

    def matches(self, limit: Limit) -> bool:
        return self.limit == limit.limit and self.period_ms == limit.period_ms

    def state(self, now: float) -> tuple[int, int]:
        """Remaining units (this process's slice counted as remaining) and ms until the bucket is full."""
        debt = max(0.0, self.tat - now)
        return max(0, math.floor((self.period_ms - debt) / self.interval + EPSILON_MS)), math.ceil(debt)


class LeasedCounters:
    """`Counters` over `RedisCounters` with per-process leases (see the module's docstring).

    Args:
        redis: the shared counters.
        lease_s: L, how long a slice is held before what is left of it goes back.
        clock: monotonic seconds.
    """

    def __init__(self, redis: RedisCounters, *, lease_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._lease_ms = lease_s * 1000
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._returning: set[asyncio.Task[None]] = set()

    def cap(self, limit: Limit) -> int:
        """The largest extra slice of `limit` a process holds: what the limit refills in one lease duration."""
        return limit.limit * int(self._lease_ms) // limit.period_ms

    def held(self, key: str) -> int:
        """Units of counter `key` this process holds unspent."""
        lease = self._leases.get(key)
        return 0 if lease is None else lease.held

    async def take(self, limits: Sequence[Limit]) -> Outcome:
        """See `Counters.take`: from this process's slices when they cover every cost, else through Redis."""
        outcome = self._local(limits, self._clock() * 1000)
        if outcome is None:
            outcome = await self._renew(limits)
        return outcome

    async def give_back(self, limit: Limit, amount: int) -> None:
        """See `Counters.give_back`: into the current slice when it has room, else to Redis."""
        lease = self._leases.get(limit.key)
        now = self._clock() * 1000
        if (
            lease is not None
            and lease.matches(limit)
            and lease.renewing is None
            and lease.expires > now
            and lease.held + amount <= self.cap(limit)
        ):
            lease.held += amount
            lease.spent = max(0, lease.spent - amount)
            lease.tat = max(now, lease.tat - amount * lease.interval)
            self._expire_at(lease, now)
            return
        await self._redis.give_back(limit, amount)

    async def close(self) -> None:
        """Give back every unspent slice, then close the connections."""
        if self._loop is not asyncio.get_running_loop():  # slices of a loop that is gone: Redis refills them
            self._leases, self._loop = {}, None
        for lease in self._leases.values():
            if lease.timer is not None:
                lease.timer.cancel()
                lease.timer = None
            if lease.held > 0 and lease.renewing is None:
                self._return(lease)
        if self._returning:
            await asyncio.gather(*self._returning, return_exceptions=True)
        self._leases.clear()
        await self._redis.close()

    # --- in the process ----------------------------------------------------------------------------------

    def _local(self, limits: Sequence[Limit], now: float) -> Outcome | None:
        """The outcome without Redis: admitted from the slices, or refused as Redis just did; None to ask Redis."""
        leases: list[_Lease] = []
        ready, blocked = True, None
        for limit in limits:
            lease = self._leases.get(limit.key)
            if lease is None or not lease.matches(limit):
                return None
            covered = lease.renewing is None and lease.held >= limit.cost and lease.expires > now
            if not covered:
                if lease.blocked_until > now and limit.cost >= lease.blocked_cost:
                    if blocked is None or lease.retry_end > leases[blocked].retry_end:
                        blocked = len(leases)
                else:
                    ready = False
            leases.append(lease)
        if blocked is not None:
            refused = leases[blocked]
            remaining, reset = zip(*(lease.state(now) for lease in leases), strict=True)
            return Outcome(
                admitted=False,
                remaining=list(remaining),
                reset_ms=list(reset),
                refused=blocked,
                retry_ms=max(1, math.ceil(refused.retry_end - now)),
                used=refused.blocked_used,
            )
        if not ready:
            return None
        remaining, reset = [], []
        for limit, lease in zip(limits, leases, strict=True):
            lease.held -= limit.cost
            lease.spent += limit.cost
            lease.tat = max(lease.tat, now) + limit.cost * lease.interval
            left, full = lease.state(now)
            remaining.append(left)
            reset.append(full)
        return Outcome(admitted=True, remaining=remaining, reset_ms=reset)

    def _coverable(self, limit: Limit) -> bool:
        """Whether a slice of `limit` could ever cover this cost."""
        cap = self.cap(limit)
        return limit.cost == 0 or (cap >= MIN_SLICE and limit.cost <= cap)

    def _extra(self, limit: Limit, lease: _Lease | None, now: float) -> int:
        """The slice to ask for beyond the request's cost: the last lease's spending over L, capped."""
        cap = self.cap(limit)
        if lease is None or not lease.matches(limit) or lease.spent <= 0:
            return 0
        elapsed = max(now - lease.since, self._lease_ms * RATE_WINDOW_MIN)
        extra = int(lease.spent * self._lease_ms / elapsed)
        return min(cap, extra) if extra >= MIN_SLICE else 0

    # --- through Redis -----------------------------------------------------------------------------------

    async def _renew(self, limits: Sequence[Limit]) -> Outcome:
        """Ask Redis for the request and new slices, once per key at a time; fail open when it does not answer."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # timers and futures belong to the loop that made them
            self._leases, self._returning, self._loop = {}, set(), loop
        outcome = await self._await_renewals(limits)
        if outcome is not None:
            return outcome
        sent = self._clock() * 1000
        if len(self._leases) >= _MAX_LEASES:
            self._prune(sent)
        leases, extras, returned = [], [], []
        renewing: asyncio.Future[None] = loop.create_future()
        # A request that no slice can cover (a limit too small to lease, a cost above a slice) always asks Redis:
        # slices of its other limits would only be stranded.
        leasable = all(self._coverable(limit) for limit in limits)
        for limit in limits:
            lease = self._leases.get(limit.key)
            extras.append(self._extra(limit, lease, sent) if leasable else 0)
            if lease is None:
                lease = self._leases[limit.key] = _Lease(limit, sent)
            returned.append(lease.held * lease.interval)
            lease.renewing = renewing
            leases.append(lease)
        reply = None
        try:
            reply = await self._redis.lease(limits, extras, returned)
        finally:
            for lease in leases:
                lease.renewing = None
                if reply is None:  # unknown whether Redis took the slice back: never spend it twice
                    lease.held = 0
            renewing.set_result(None)
        if reply is None:
            return unchecked(limits)
        self._update(limits, leases, reply, sent)
        return reply.outcome

    async def _await_renewals(self, limits: Sequence[Limit]) -> Outcome | None:
        """Wait while another request renews one of these counters, then try the new slices; None: renew."""
        while True:
            waiting = {
                lease.renewing
                for limit in limits
                if (lease := self._leases.get(limit.key)) is not None and lease.renewing is not None
            }
            if not waiting:
                return None
            await asyncio.wait(waiting)
            outcome = self._local(limits, self._clock() * 1000)
            if outcome is not None:
                return outcome

    def _update(self, limits: Sequence[Limit], leases: list[_Lease], reply: Lease, sent: float) -> None:
        """Take in what Redis answered a lease command sent at `sent`."""
        now = self._clock() * 1000
        outcome = reply.outcome
        for index, (limit, lease) in enumerate(zip(limits, leases, strict=True)):
            if outcome.admitted:
                self._start(lease, limit, reply.granted[index], sent)
            elif not lease.matches(limit):  # refused on a changed limit: the old slice goes back as it was taken
                self._return(lease)
                self._start(lease, limit, 0, sent)
                lease.spent = 0
            lease.tat = now + reply.debts_ms[index]
        if not outcome.admitted:
            lease = leases[outcome.refused]
            lease.blocked_until = now + min(outcome.retry_ms, self._lease_ms)
            lease.blocked_cost = limits[outcome.refused].cost
            lease.blocked_used = outcome.used
            lease.retry_end = now + outcome.retry_ms

    def _start(self, lease: _Lease, limit: Limit, granted: int, sent: float) -> None:
        """A new slice of `granted` units, taken (for the request's cost) at `sent`."""
        lease.limit, lease.period_ms, lease.interval = limit.limit, limit.period_ms, limit.period_ms / limit.limit
        lease.held = granted
        lease.since, lease.spent = sent, limit.cost
        lease.expires = sent + self._lease_ms
        lease.blocked_until = 0.0
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None
        self._expire_at(lease, sent)

    def _expire_at(self, lease: _Lease, now: float) -> None:
        """Make sure what `lease` holds goes back at its expiry."""
        if lease.timer is None and lease.held > 0 and self._loop is not None:
            lease.timer = self._loop.call_later(max(0.0, lease.expires - now) / 1000, self._expired, lease)

    def _expired(self, lease: _Lease) -> None:
        lease.timer = None
        if lease.renewing is None and lease.held > 0:
            self._return(lease)

    def _return(self, lease: _Lease) -> None:
        """Give `lease`'s unspent units back to Redis (in the background)."""
        amount, lease.held = lease.held, 0
        if self._loop is None:
            return
        limit = Limit(lease.key, lease.limit, lease.period_ms, 0)
        task = self._loop.create_task(self._redis.give_back(limit, amount))
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)

    def _prune(self, now: float) -> None:
        """Forget counters this process holds nothing of and does not refuse locally."""
        self._leases = {
            key: lease
            for key, lease in self._leases.items()
            if lease.held > 0 or lease.renewing is not None or lease.blocked_until > now or lease.expires > now
        }

"""Rate-limit counters in Redis, shared by every API process: one Lua script takes all of a request's limits.

The script is `counters.gcra` in Lua, run atomically by Redis on its own clock (`TIME`), so processes on hosts
whose clocks disagree still share one limit. A counter key expires when its bucket is full again. A second
script, `LEASE_SCRIPT`, is the same take plus a slice of each limit for the process to spend itself: `leases.py`,
which by default sits on top of these counters, uses it instead of the take.

Redis being slow or gone must not take the API down. Connections have short connect and read timeouts
(`TUNEWRIGHT_REDIS_TIMEOUT_S`); the first failure opens a breaker for `TUNEWRIGHT_REDIS_RETRY_S`, during which
requests are let through unchecked at once (fail open) instead of each waiting for a timeout, and one request
then tries Redis again. Each opening is logged once, and every failure and unchecked request is counted.

Connections are redis-py's own (`redis.asyncio.connection.Connection`, with the hiredis parser when installed),
kept in a free list: redis-py's client and pool add about 50 µs of Python per command (locks, health checks,
retries), more than the round trip itself, on a path every request takes (bench/README.md). The commands of
concurrent requests are pipelined: one write and one read per turn of the event loop rather than per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from tunewright.api.ratelimits.counters import Outcome, room, unchecked

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from redis.asyncio.connection import AbstractConnection

    from tunewright.api.ratelimits.counters import Limit

logger = logging.getLogger(__name__)

MAX_IDLE_CONNECTIONS = 32


class Lease(NamedTuple):
    """What a lease command gave.

    The request's outcome, the extra units granted to the process for each limit, and each limit's debt (ms
    until its bucket is full) after the request, not counting the grant.
    """

    outcome: Outcome
    granted: list[int]
    debts_ms: list[float]


# KEYS: one counter per limit. ARGV: limit, period (ms), cost for each, in KEYS order.
# Returns {admitted (1/0), refused index (1-based, 0 when admitted), retry ms, used, then remaining and
# reset ms for each limit}. Numbers are whole: Redis truncates Lua numbers to integers on the way out.
TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local eps = 0.001
local n = #KEYS
local tats, new_tats = {}, {}
local refused, retry, used = 0, 0, 0
for i = 1, n do
  local limit, period, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local interval = period / limit
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local wait = new_tat - period - now
  if wait > eps and wait > retry then
    refused, retry = i, wait
    used = limit - math.max(0, math.floor((period - (tat - now)) / interval + eps))
  end
  tats[i], new_tats[i] = tat, new_tat
end
local out = {refused == 0 and 1 or 0, refused, math.ceil(retry), used}
for i = 1, n do
  local limit, period = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1])
  local tat = tats[i]
  if refused == 0 then
    tat = new_tats[i]
    redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1)
  end
  out[#out + 1] = math.max(0, math.floor((period - (tat - now)) / (period / limit) + eps))
  out[#out + 1] = math.ceil(tat - now)
end
return out
"""

# A lease (`leases.py`): KEYS: one counter per limit. ARGV: limit, period (ms), cost, extra, returned (ms) for each,
# in KEYS order. First gives back `returned` ms of the process's earlier lease (its unspent units), then takes
# every cost or none (as TAKE_SCRIPT), and when admitted also up to `extra` more units of each limit, as many as
# fit, for the process to spend later. Nothing is written when refused. Returns {admitted, refused index
# (1-based), retry ms, used, then for each limit: units granted beyond the cost, and its debt in ms after the
# cost but not counting the grant (a string: fractions survive)}.
LEASE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local eps = 0.001
local n = #KEYS
local tats = {}
local refused, retry, used = 0, 0, 0
for i = 1, n do
  local limit, period, cost = tonumber(ARGV[5*i-4]), tonumber(ARGV[5*i-3]), tonumber(ARGV[5*i-2])
  local interval = period / limit
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') - tonumber(ARGV[5*i])
  if tat < now then tat = now end
  local wait = tat + cost * interval - period - now
  if wait > eps and wait > retry then
    refused, retry = i, wait
    used = limit - math.max(0, math.floor((period - (tat - now)) / interval + eps))
  end
  tats[i] = tat
end
local out = {refused == 0 and 1 or 0, refused, math.ceil(retry), used}
for i = 1, n do
  local limit, period, cost = tonumber(ARGV[5*i-4]), tonumber(ARGV[5*i-3]), tonumber(ARGV[5*i-2])
  local interval = period / limit
  local tat, grant = tats[i], 0
  if refused == 0 then
    tat = tat + cost * interval
    grant = math.min(tonumber(ARGV[5*i-1]), math.max(0, math.floor((period - (tat - now)) / interval + eps)))
    local full = tat + grant * interval
    redis.call('SET', KEYS[i], string.format('%.3f', full), 'PX', math.ceil(full - now) + 1)
  end
  out[#out + 1] = grant
  out[#out + 1] = string.format('%.3f', tat - now)
end
return out
"""

# KEYS[1]: a counter. ARGV: limit, period (ms), units to give back.
GIVE_BACK_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat <= now then return 0 end
tat = math.max(now, tat - tonumber(ARGV[3]) * tonumber(ARGV[2]) / tonumber(ARGV[1]))
if tat - now < 1 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1)
end
return 1
"""


class RedisCounters:
    """`Counters` in Redis, failing open behind a breaker.

    Args:
        url: `redis://`, `rediss://` or `unix://` URL (database and password included).
        prefix: put before every key, so several deployments (or tests) can share one Redis.
        timeout_s: connect and read timeout of each command.
        retry_s: how long the breaker stays open after a failure.
        on_error: called once per failed command (the metric).
        on_unchecked: called once per request let through unchecked (the metric).
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout_s: float,
        retry_s: float,
        on_error: Callable[[], None] = lambda: None,
        on_unchecked: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        options: dict[str, Any] = dict(parse_url(url))
        self._connection_class = options.pop("connection_class", None)
        if self._connection_class is None:
            from redis.asyncio.connection import Connection

            self._connection_class = Connection
        self._options = {
            **options,
            "socket_connect_timeout": timeout_s,
            "socket_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
        }
        self._prefix = prefix + ":"
        self._retry_s = retry_s
        self._on_error = on_error
        self._on_unchecked = on_unchecked
        self._clock = clock
        self._idle: list[AbstractConnection] = []
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._inline = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open_until = 0.0
        self._failing = False
        self._take_sha = _sha1(TAKE_SCRIPT)
        self._give_back_sha = _sha1(GIVE_BACK_SCRIPT)
        self._lease_sha = _sha1(LEASE_SCRIPT)

    async def take(self, limits: Sequence[Limit]) -> Outcome:
        """See `Counters.take`: admitted unchecked while Redis is failing."""
        args: list[Any] = [self._prefix + limit.key for limit in limits]
        for limit in limits:
            args += (limit.limit, limit.period_ms, limit.cost)
        reply = await self._script(TAKE_SCRIPT, self._take_sha, len(limits), args)
        if reply is None:
            self._on_unchecked()
            return unchecked(limits)
        admitted, refused, retry, used = (int(value) for value in reply[:4])
        values = [int(value) for value in reply[4:]]
        return Outcome(
            admitted=bool(admitted),
            remaining=values[0::2],
            reset_ms=values[1::2],
            refused=refused - 1,
            retry_ms=retry,
            used=used,
        )

    async def lease(self, limits: Sequence[Limit], extras: Sequence[int], returned_ms: Sequence[float]) -> Lease | None:
        """Take every limit's cost (all or none), and up to `extras[i]` more units of limit i; None while failing.

        First `returned_ms[i]` of an earlier lease of limit i goes back. The caller fails open on None. The
        outcome's `remaining` and `reset_ms` count the granted extra units as not taken: they are the caller's to
        spend, so what remains to it (`leases.py` keeps the headers so).
        """
        args: list[Any] = [self._prefix + limit.key for limit in limits]
        for limit, extra, returned in zip(limits, extras, returned_ms, strict=True):
            args += (limit.limit, limit.period_ms, limit.cost, extra, f"{returned:.3f}")
        reply = await self._script(LEASE_SCRIPT, self._lease_sha, len(limits), args)
        if reply is None:
            self._on_unchecked()
            return None
        admitted, refused, retry, used = (int(value) for value in reply[:4])
        grants = [int(value) for value in reply[4::2]]
        debts = [float(value) for value in reply[5::2]]
        remaining, reset = [], []
        for limit, debt in zip(limits, debts, strict=True):
            remaining.append(room(limit, debt))
            reset.append(math.ceil(debt))
        outcome = Outcome(
            admitted=bool(admitted),
            remaining=remaining,
            reset_ms=reset,
            refused=refused - 1,
            retry_ms=retry,
            used=used,
        )
        return Lease(outcome, grants, debts)

    async def give_back(self, limit: Limit, amount: int) -> None:
        """See `Counters.give_back`: dropped while Redis is failing."""
        args = [self._prefix + limit.key, limit.limit, limit.period_ms, amount]
        await self._script(GIVE_BACK_SCRIPT, self._give_back_sha, 1, args)

    async def close(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)

    async def _script(self, script: str, sha: str, keys: int, args: Sequence[Any]) -> list[Any] | None:
        """Run a script by its digest (loading it if Redis lost it); None while failing."""
        now = self._clock()
        if now < self._open_until:
            return None
        if self._failing:
            self._open_until = now + self._retry_s  # this request probes; the others go on unchecked
        try:
            try:
                reply = await self._command("EVALSHA", sha, keys, *args)
            except NoScriptError:  # a restarted or flushed Redis: EVAL caches the script again
                reply = await self._command("EVAL", script, keys, *args)
        except (RedisError, OSError) as exc:
            self._fail(exc)
            return None
        if self._failing:
            self._failing, self._open_until = False, 0.0
            logger.warning("rate-limit counters: Redis answers again; limits are enforced")
        return reply

    def _fail(self, exc: BaseException) -> None:
        self._on_error()
        self._open_until = self._clock() + self._retry_s
        if not self._failing:
            self._failing = True
            logger.error(
                "rate-limit counters: Redis failed (%s: %s); requests pass unchecked, retrying every %.1f s",
                type(exc).__name__,
                exc,
                self._retry_s,
            )

    async def _command(self, *args: Any) -> Any:
        """Send one command and wait for its reply; commands of concurrent requests go out together.

        With nothing in flight the command goes out from the caller's task. Otherwise commands issued meanwhile
        are written in one pipeline and their replies read in order by one flush task, so a busy process pays one
        write and one read per batch, not per request; a request that gives up (cancelled) leaves its reply to be
        read by the flush, so the connection stays in step.
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections and futures belong to the loop that made them
            self._idle, self._pending, self._loop, self._inline = [], [], loop, False
        reply: asyncio.Future[Any] = loop.create_future()
        if not self._inline and not self._flushing and not self._pending:
            self._inline = True  # nothing in flight: send it from this task, no flush task to start
            try:
                await self._flush([(args, reply)])
            finally:
                self._inline = False
            return reply.result()
        self._pending.append((args, reply))
        if len(self._pending) == 1:
            loop.call_soon(self._flush_soon, loop)
        return await reply

    def _flush_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending, []
        if batch:
            task = loop.create_task(self._flush(batch))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _flush(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        connection = self._idle.pop() if self._idle else self._connection_class(**self._options)
        try:
            packed = connection.pack_commands([args for args, _ in batch])
            await connection.send_packed_command(packed, check_health=False)
            for _, reply in batch:
                try:
                    value = await connection.read_response()
                except NoScriptError as exc:  # that command's own error: the next replies follow as usual
                    _settle(reply, exc)
                else:
                    _settle(reply, value)
        except BaseException as exc:
            # Unknown state (a timeout mid-reply): never reuse the connection; every waiter learns of it.
            for _, reply in batch:
                _settle(reply, exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)
            if not isinstance(exc, Exception):
                raise
            return
        if len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(connection)
        else:
            await connection.disconnect(nowait=True)


def _settle(reply: asyncio.Future[Any], value: Any) -> None:
    """Hand a waiter its reply (or error), unless it gave up."""
    if reply.done():
        return
    if isinstance(value, BaseException):
        reply.set_exception(value)
    else:
        reply.set_result(value)


def _sha1(script: str) -> str:
    import hashlib

    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()

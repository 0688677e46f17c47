"""Rate limits as OpenAI applies them: per project and base model on inference, per key everywhere else.

Inference (`/v1/chat/completions`, `/v1/completions`) takes, all or nothing, one request from the project's
requests-per-minute and (when set) requests-per-day limit of the base model, and from its tokens-per-minute limit
the prompt tokens plus the completion budget of every choice, as OpenAI estimates at admission. What the request
did not generate is given back when it ends. Fine-tuned and checkpoint models count against their base model.
Every answer after admission (errors and streams included) carries OpenAI's six `x-ratelimit-*` headers; a
refusal is 429 `rate_limit_exceeded` with OpenAI's message, `retry-after` and `retry-after-ms`.

Every other authenticated route takes one request from the calling key's `TUNEWRIGHT_KEY_REQUESTS_PER_MINUTE`
(the operator key is not limited). Limits an admin set (`project_rate_limits`) are read at most once a second
per project and process; a change made through this process applies at once.

The counters are this process's (`counters.py`) or Redis's (`redis_counters.py`), and with Redis a busy limit is
leased to the process a slice at a time (`leases.py`, which states what then holds across processes and how
far the headers may lag).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.di import NamedDependency

from tunewright.api.auth import OPERATOR
from tunewright.api.dependencies import store_read
from tunewright.api.errors import RateLimitError, TokensRateLimitError
from tunewright.api.metrics import RESPONSE_HEADERS
from tunewright.api.ratelimits.counters import Limit, MemoryCounters, Outcome

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tunewright.api.auth import Principal
    from tunewright.api.metrics import Metrics
    from tunewright.api.ratelimits.counters import Counters
    from tunewright.inference.engine import GenerationRequest
    from tunewright.storage.base import Stores
    from tunewright.storage.records import RateLimitRecord
    from tunewright.storage.settings import Settings

MINUTE_MS = 60_000
DAY_MS = 86_400_000
LIMITS_CACHE_TTL_S = 1.0
"""How long a process answers a project's limits from memory: a change made elsewhere applies within this."""
_CACHE_MAX = 10_000


class ModelLimits(msgspec.Struct, frozen=True):
    """A project's limits on one base model; `requests_per_day` 0 means none."""

    requests_per_minute: int
    tokens_per_minute: int
    requests_per_day: int


# What each kind of limit is called in OpenAI's messages and in the rejection metric.
_LABELS = {
    "rpm": ("requests per min (RPM)", "requests_per_minute"),
    "tpm": ("tokens per min (TPM)", "tokens_per_minute"),
    "rpd": ("requests per day (RPD)", "requests_per_day"),
}


def duration(ms: int) -> str:
    """A wait in OpenAI's header format (Go's durations): `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds


def retry_headers(retry_ms: int) -> dict[str, str]:
    """`retry-after` (whole seconds, as OpenAI sends) and `retry-after-ms`, which the SDK reads first."""
    return {"retry-after": str(max(1, math.ceil(retry_ms / 1000))), "retry-after-ms": str(max(1, retry_ms))}


class Admission:
    """An admitted inference request: its headers, and its token estimate to settle when it ends."""

    def __init__(self, counters: Counters, tokens: Limit, outcome: Outcome) -> None:
        """Remember what was taken."""
        self._counters = counters
        self._tokens = tokens
        self._checked = outcome.checked
        self._settled = False

    async def settle(self, used_tokens: int) -> None:
        """Give back the tokens the request was charged for but did not use (once)."""
        if self._settled or not self._checked:
            return
        self._settled = True
        unused = self._tokens.cost - used_tokens
        if unused > 0:
            await self._counters.give_back(self._tokens, unused)


class RateLimiter:
    """Admits requests against their limits; one per app."""

    def __init__(self, settings: Settings, stores: Stores, counters: Counters, metrics: Metrics) -> None:
        """Enforce `settings`' limits (and the projects' own, from `stores`) with `counters`."""
        self.enabled = settings.rate_limits
        self._settings = settings
        self._stores = stores
        self._counters = counters
        self._metrics = metrics
        self._cache: dict[str, tuple[float, dict[str, RateLimitRecord]]] = {}

    # --- limits ----------------------------------------------------------------------------------------

    def defaults(self) -> ModelLimits:
        """The deployment's limits for a model no admin has set."""
        settings = self._settings
        return ModelLimits(
            requests_per_minute=settings.rate_limit_requests_per_minute,
            tokens_per_minute=settings.rate_limit_tokens_per_minute,
            requests_per_day=settings.rate_limit_requests_per_day,
        )

    def effective(self, record: RateLimitRecord | None) -> ModelLimits:
        """A model's limits: what an admin set, the defaults for the rest."""
        default = self.defaults()
        if record is None:
            return default
        return ModelLimits(
            requests_per_minute=_pick(record.max_requests_per_1_minute, default.requests_per_minute),
            tokens_per_minute=_pick(record.max_tokens_per_1_minute, default.tokens_per_minute),
            requests_per_day=_pick(record.max_requests_per_1_day, default.requests_per_day),
        )

    async def limits(self, project_id: str, base_model: str) -> ModelLimits:
        """The project's limits on `base_model`, from memory for at most `LIMITS_CACHE_TTL_S`."""
        now = time.monotonic()
        entry = self._cache.get(project_id)
        if entry is None or now - entry[0] >= LIMITS_CACHE_TTL_S:
            records = await store_read(self._stores, self._stores.metadata.list_rate_limits, project_id=project_id)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            entry = (now, {record.model: record for record in records})
            self._cache[project_id] = entry
        return self.effective(entry[1].get(base_model))

    def forget(self, project_id: str) -> None:
        """Drop a project's cached limits (after an admin changed them through this process)."""
        self._cache.pop(project_id, None)

    # --- inference -------------------------------------------------------------------------------------

    async def admit(
        self, principal: Principal, base_model: str, tokens: int, state: dict[str, Any]
    ) -> Admission | None:
        """Take one request and `tokens` from the project's limits on `base_model`; None when limits are off.

        The headers go into the request's `state` (`RESPONSE_HEADERS`), so whatever answer follows carries them.

        Raises:
            RateLimitError: over a limit (`TokensRateLimitError` for tokens), with the headers and the wait.
        """
        if not self.enabled:
            return None
        project_id = principal.project_id or ""
        limits = await self.limits(project_id, base_model)
        if tokens > limits.tokens_per_minute:
            self._metrics.ratelimit_rejections.labels("request_too_large", base_model).inc()
            raise TokensRateLimitError(
                f"Request too large for {base_model} in project {project_id} on tokens per min (TPM): "
                f"Limit {limits.tokens_per_minute}, Requested {tokens}. The input or output tokens must be "
                "reduced in order to run successfully.",
                retryable=False,
            )
        scope = f"{{{project_id}:{base_model}}}"  # one hash slot per project and model on a Redis Cluster
        taken = [
            Limit(f"rl:{scope}:rpm", limits.requests_per_minute, MINUTE_MS, 1),
            Limit(f"rl:{scope}:tpm", limits.tokens_per_minute, MINUTE_MS, tokens),
        ]
        if limits.requests_per_day:
            taken.append(Limit(f"rl:{scope}:rpd", limits.requests_per_day, DAY_MS, 1))
        outcome = await self._counters.take(taken)
        headers = _headers(taken, outcome)
        if not outcome.admitted:
            kind = taken[outcome.refused].key.rsplit(":", 1)[1]
            label, metric = _LABELS[kind]
            self._metrics.ratelimit_rejections.labels(metric, base_model).inc()
            refused = taken[outcome.refused]
            error_class = TokensRateLimitError if kind == "tpm" else RateLimitError
            raise error_class(
                f"Rate limit reached for {base_model} in project {project_id} on {label}: Limit {refused.limit}, "
                f"Used {outcome.used}, Requested {refused.cost}. Please try again in {duration(outcome.retry_ms)}.",
                headers={**headers, **retry_headers(outcome.retry_ms)},
            )
        state[RESPONSE_HEADERS] = [(name.encode(), value.encode()) for name, value in headers.items()]
        return Admission(self._counters, taken[1], outcome)

    # --- every other route -----------------------------------------------------------------------------

    async def check_key(self, principal: Principal) -> None:
        """Take one request from the key's per-minute limit (not the operator key's).

        Raises:
            RateLimitError: over the limit, with `retry-after`.
        """
        per_minute = self._settings.key_requests_per_minute
        if not self.enabled or not per_minute or principal.kind == OPERATOR:
            return
        limit = Limit(f"rl:key:{principal.key_id}", per_minute, MINUTE_MS, 1)
        outcome = await self._counters.take([limit])
        if outcome.admitted:
            return
        self._metrics.ratelimit_rejections.labels("key_requests_per_minute", "").inc()
        raise RateLimitError(
            f"Rate limit reached for requests in API key {principal.key_id} on requests per min (RPM): "
            f"Limit {per_minute}, Used {outcome.used}, Requested 1. Please try again in {duration(outcome.retry_ms)}.",
            headers={
                "x-ratelimit-limit-requests": str(per_minute),
                "x-ratelimit-remaining-requests": str(outcome.remaining[0]),
                "x-ratelimit-reset-requests": duration(outcome.reset_ms[0]),
                **retry_headers(outcome.retry_ms),
            },
        )

    async def close(self) -> None:
        """Close the counters' connections."""
        await self._counters.close()


class Quota:
    """The limiter bound to one request's scope state, where an admission leaves its headers."""

    def __init__(self, limiter: RateLimiter, state: dict[str, Any]) -> None:
        """Bind `limiter` to a request whose scope state is `state`."""
        self._limiter = limiter
        self._state = state

    async def admit(self, principal: Principal, base_model: str, tokens: int) -> Admission | None:
        """See `RateLimiter.admit`."""
        return await self._limiter.admit(principal, base_model, tokens, self._state)


AppLimiter = NamedDependency[RateLimiter]
"""`limiter: AppLimiter`: the app's rate limiter."""


def charged_tokens(requests: Sequence[GenerationRequest]) -> int:
    """What a request is charged at admission, as OpenAI estimates: its prompt tokens plus every choice's budget."""
    return sum(len(request.prompt_ids) + request.params.max_new_tokens * request.n for request in requests)


def _pick(value: int | None, default: int) -> int:
    return default if value is None else value


def _headers(taken: list[Limit], outcome: Outcome) -> dict[str, str]:
    """OpenAI's six headers, from the per-minute request and token limits."""
    return {
        "x-ratelimit-limit-requests": str(taken[0].limit),
        "x-ratelimit-limit-tokens": str(taken[1].limit),
        "x-ratelimit-remaining-requests": str(outcome.remaining[0]),
        "x-ratelimit-remaining-tokens": str(outcome.remaining[1]),
        "x-ratelimit-reset-requests": duration(outcome.reset_ms[0]),
        "x-ratelimit-reset-tokens": duration(outcome.reset_ms[1]),
    }


def build_counters(settings: Settings, metrics: Metrics) -> Counters:
    """Redis when `TUNEWRIGHT_REDIS_URL` is set (every process shares the limits), else this process's memory.

    With Redis, busy limits are leased to the process for `TUNEWRIGHT_REDIS_LEASE_S` (`leases.py`; 0: every
    request asks Redis).
    """
    if settings.redis_url is None:
        return MemoryCounters()
    from tunewright.api.ratelimits.leases import LeasedCounters
    from tunewright.api.ratelimits.redis_counters import RedisCounters

    counters = RedisCounters(
        settings.redis_url,
        prefix=settings.redis_key_prefix,
        timeout_s=settings.redis_timeout_s,
        retry_s=settings.redis_retry_s,
        on_error=metrics.ratelimit_redis_errors.inc,
        on_unchecked=metrics.ratelimit_unchecked.inc,
    )
    if settings.redis_lease_s > 0:
        return LeasedCounters(counters, lease_s=settings.redis_lease_s)
    return counters

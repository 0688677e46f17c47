"""Rules of /v1/organization/usage/… and /v1/organization/costs: time buckets, groups, filters and prices.

Time. `start_time` (inclusive) to `end_time` (exclusive; the end of the current second when absent) is cut into
buckets of `bucket_width` from `start_time` on (the last one ends at `end_time`). A page holds `limit` buckets
(OpenAI's defaults and maxima per width); `next_page` is a cursor naming the page's next bucket, to send back
with the same query.
Every bucket of the range is listed, an empty one with `results: []`.

Scope. An organization admin key reads its own organization; the operator key reads every organization, or the
one its `OpenAI-Organization` header names. A filter naming another organization's projects keeps nothing.

What Tunewright cannot tell apart, it reports as one value: usage belongs to keys, not users (`user_id` is
null, and a `user_ids` filter is refused: it could only keep nothing); there is no Batch API (`batch` is false,
and `batch=true` keeps nothing); every request is served alike (`service_tier` "default"); no request comes
through the Agents API (`api_source` "unlabeled").

Costs are computed here, when read, from the prices in the settings (dollars per 1M tokens of the base model,
per GiB-month of storage): a fine-tuned or checkpoint model's usage carries its base model. Line items are
`<base model>, input_tokens`, `<base model>, output_tokens`, `<base model>, training_tokens` and `storage`.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from msgspec import UNSET

from tunewright.api.admin.service import organization_scope
from tunewright.api.errors import InvalidRequestError
from tunewright.api.pagination import check_choice, check_limit
from tunewright.api.parameters import invalid, unsupported
from tunewright.api.usage.schemas import (
    CostsResult,
    CostsResultAmount,
    UsageCompletionsResult,
    UsageFineTuningResult,
    UsageResponse,
    UsageTimeBucket,
)
from tunewright.storage.records import UsageWindow

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from tunewright.api.auth import Principal
    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

T = TypeVar("T")
R = TypeVar("R")

# bucket_width: (seconds, default limit, most buckets a page may hold), as OpenAI documents them.
USAGE_WIDTHS = {"1m": (60, 60, 1440), "1h": (3600, 24, 168), "1d": (86_400, 7, 31)}
COSTS_WIDTHS = {"1d": (86_400, 7, 180)}
COMPLETIONS_GROUPS = ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier", "api_source")
FINE_TUNING_GROUPS = ("project_id", "model")
COSTS_GROUPS = ("project_id", "user_id", "line_item", "api_key_id", "api_source")
PAGE_PREFIX = "page_"
MAX_TIME = 2**40  # unix seconds far beyond any usage row, and well inside a BIGINT
MILLION = Decimal(1_000_000)
GIB = Decimal(2**30)
MONTH_DAYS = Decimal(30)
STORAGE_LINE = "storage"


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """The query parameters the usage and costs endpoints share, as sent (arrays from `x[]=…` or `x=…`)."""

    start_time: int | None
    end_time: int | None = None
    bucket_width: str = "1d"
    limit: int | None = None
    page: str | None = None
    group_by: tuple[str, ...] = ()
    project_ids: tuple[str, ...] | None = None
    api_key_ids: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    user_ids: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """The buckets one page holds: `count` buckets of `width` seconds from `first`, within `[origin, end)`."""

    origin: int
    width: int
    end: int
    first: int
    count: int
    has_more: bool

    def window(self, organization_id: str | None, query: UsageQuery) -> UsageWindow:
        """What the store reads for this page: the rows of its buckets, with the query's filters."""
        return UsageWindow(
            organization_id=organization_id,
            origin=self.origin,
            width=self.width,
            start=self.first,
            end=min(self.first + self.count * self.width, self.end),
            project_ids=query.project_ids,
            api_key_ids=query.api_key_ids,
            models=query.models,
        )

    def response(self, results: dict[int, list[R]]) -> UsageResponse[R]:
        """The page, each bucket with its results (by bucket index from `origin`)."""
        data = []
        for i in range(self.count):
            start = self.first + i * self.width
            index = (start - self.origin) // self.width
            end = min(start + self.width, self.end)
            data.append(UsageTimeBucket(start_time=start, end_time=end, results=results.get(index, [])))
        following = self.first + self.count * self.width
        return UsageResponse(
            data=data, has_more=self.has_more, next_page=encode_page(following) if self.has_more else None
        )


def plan_page(query: UsageQuery, *, widths: dict[str, tuple[int, int, int]], now: int) -> Page:
    """Check the time parameters and work out which buckets this page holds.

    Raises:
        InvalidRequestError: `start_time` missing or negative, `end_time` not after it, an unknown
            `bucket_width`, a `limit` out of range, or a `page` that is not a cursor of this query.
    """
    if query.start_time is None:
        raise InvalidRequestError(
            "Missing required parameter: 'start_time'.", param="start_time", code="missing_required_parameter"
        )
    for name in ("start_time", "end_time"):
        value = getattr(query, name)
        if value is not None and not 0 <= value < MAX_TIME:
            raise invalid(name, f"must be a unix time in seconds, got {value}.")
    if query.end_time is not None and query.end_time <= query.start_time:
        raise invalid("end_time", f"must be after start_time ({query.start_time}), got {query.end_time}.")
    check_choice(query.bucket_width, list(widths), param="bucket_width")
    width, default_limit, max_limit = widths[query.bucket_width]
    limit = check_limit(default_limit if query.limit is None else query.limit, maximum=max_limit)
    end = now + 1 if query.end_time is None else query.end_time
    first = query.start_time if query.page is None else decode_page(query.page, query.start_time, width, end)
    remaining = max(0, -(-(end - first) // width))
    count = min(limit, remaining)
    return Page(origin=query.start_time, width=width, end=end, first=first, count=count, has_more=remaining > count)


def encode_page(start: int) -> str:
    """The cursor of the page whose first bucket starts at `start`."""
    return PAGE_PREFIX + base64.urlsafe_b64encode(start.to_bytes(8, "big", signed=True)).decode()


def decode_page(page: str, origin: int, width: int, end: int) -> int:
    """The first bucket's start named by a cursor of this query.

    Raises:
        InvalidRequestError: not a cursor, or one of another query (a bucket this query does not have).
    """
    try:
        raw = base64.urlsafe_b64decode(page.removeprefix(PAGE_PREFIX).encode())
    except (binascii.Error, ValueError):
        raw = b""
    start = int.from_bytes(raw, "big", signed=True) if page.startswith(PAGE_PREFIX) and len(raw) == 8 else -1
    if start < origin or start >= end or (start - origin) % width:
        raise invalid("page", "not a `next_page` cursor of this query (send the same start_time and bucket_width).")
    return start


def parse_group_by(values: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    """The `group_by` fields in the order sent, each once.

    Raises:
        InvalidRequestError: a field this endpoint cannot group by.
    """
    for value in values:
        check_choice(value, allowed, param="group_by")
    return tuple(dict.fromkeys(values))


def organization_id(stores: Stores, principal: Principal) -> str | None:
    """The organization whose usage the caller reads; None: every one (the operator key without a header)."""
    scope = organization_scope(stores, principal)
    return None if scope is None else scope.id


def by_bucket(totals: Iterable[T], result: Callable[[T], R]) -> dict[int, list[R]]:
    """Results keyed by the bucket index of their totals (which come in bucket order)."""
    buckets: dict[int, list[R]] = defaultdict(list)
    for total in totals:
        buckets[total.bucket].append(result(total))  # type: ignore[attr-defined]
    return buckets


# --- endpoints --------------------------------------------------------------------------------------------


def completions_usage(
    stores: Stores, principal: Principal, query: UsageQuery, *, batch: bool | None, now: int | None = None
) -> UsageResponse[UsageCompletionsResult]:
    """`GET /v1/organization/usage/completions`: chat and legacy completion tokens per bucket and group."""
    if query.user_ids is not None:
        raise unsupported("user_ids", "cannot be honoured: Tunewright attributes usage to projects and API keys")
    groups = parse_group_by(query.group_by, COMPLETIONS_GROUPS)
    page = plan_page(query, widths=USAGE_WIDTHS, now=int(time.time()) if now is None else now)
    stored = [group for group in groups if group in ("project_id", "api_key_id", "model")]
    window = page.window(organization_id(stores, principal), query)
    totals = [] if batch is True or page.count == 0 else stores.metadata.usage_totals(window, group_by=stored)

    def result(total: Any) -> UsageCompletionsResult:
        return UsageCompletionsResult(
            input_tokens=total.input_tokens,
            input_uncached_tokens=total.input_tokens,
            output_tokens=total.output_tokens,
            input_text_tokens=total.input_tokens,
            output_text_tokens=total.output_tokens,
            num_model_requests=total.requests,
            project_id=total.project_id,
            api_key_id=total.api_key_id,
            model=total.model,
            batch=False if "batch" in groups else None,
            service_tier="default" if "service_tier" in groups else None,
            api_source="unlabeled" if "api_source" in groups else UNSET,
        )

    return page.response(by_bucket(totals, result))


def fine_tuning_usage(
    stores: Stores, principal: Principal, query: UsageQuery, *, now: int | None = None
) -> UsageResponse[UsageFineTuningResult]:
    """`GET /v1/organization/usage/fine_tuning` (Tunewright's): trained tokens and jobs per bucket and group."""
    for name in ("api_key_ids", "user_ids"):
        if getattr(query, name) is not None:
            raise unsupported(name, "cannot be honoured: training is attributed to projects, not to API keys")
    groups = parse_group_by(query.group_by, FINE_TUNING_GROUPS)
    page = plan_page(query, widths=USAGE_WIDTHS, now=int(time.time()) if now is None else now)
    window = page.window(organization_id(stores, principal), query)
    totals = [] if page.count == 0 else stores.metadata.training_totals(window, group_by=groups)

    def result(total: Any) -> UsageFineTuningResult:
        return UsageFineTuningResult(
            trained_tokens=total.trained_tokens, num_jobs=total.jobs, project_id=total.project_id, model=total.model
        )

    return page.response(by_bucket(totals, result))


@dataclass(slots=True)
class CostLine:
    """What one line item of one bucket, project and key cost: its quantity and dollars."""

    bucket: int
    project_id: str | None
    api_key_id: str | None
    line_item: str
    unit: str
    quantity: Decimal
    amount: Decimal


@dataclass(slots=True)
class CostSum:
    """Cost lines added up for one result."""

    quantity: Decimal = field(default_factory=Decimal)
    amount: Decimal = field(default_factory=Decimal)
    units: set[str] = field(default_factory=set)


def cost_lines(stores: Stores, settings: Settings, window: UsageWindow) -> list[CostLine]:
    """Every line item of the window: inference input and output, training, storage, priced."""
    lines: list[CostLine] = []
    for total in stores.metadata.usage_totals(window, group_by=("project_id", "api_key_id", "base_model")):
        price = settings.model_price(total.base_model or "")
        for kind, tokens, dollars in (
            ("input_tokens", total.input_tokens, price.input),
            ("output_tokens", total.output_tokens, price.output),
        ):
            lines.append(_token_line(total, f"{total.base_model}, {kind}", tokens, dollars, total.api_key_id))
    for total in stores.metadata.training_totals(window, group_by=("project_id", "base_model")):
        price = settings.model_price(total.base_model or "")
        line = f"{total.base_model}, training_tokens"
        lines.append(_token_line(total, line, total.trained_tokens, price.training, None))
    storage_price = Decimal(str(settings.storage_price))
    for total in stores.metadata.storage_totals(window, group_by=("project_id",)):
        gib_days = Decimal(total.byte_days) / GIB
        amount = gib_days * storage_price / MONTH_DAYS
        lines.append(
            CostLine(total.bucket, total.project_id, None, STORAGE_LINE, "gibibyte_hours", gib_days * 24, amount)
        )
    return lines


def token_cost(tokens: int, dollars_per_million: float) -> Decimal:
    """What `tokens` cost at a price in dollars per 1M tokens."""
    return Decimal(tokens) * Decimal(str(dollars_per_million)) / MILLION


def _token_line(total: Any, line_item: str, tokens: int, dollars: float, api_key_id: str | None) -> CostLine:
    amount = token_cost(tokens, dollars)
    return CostLine(total.bucket, total.project_id, api_key_id, line_item, "tokens", Decimal(tokens), amount)


def costs(
    stores: Stores,
    settings: Settings,
    principal: Principal,
    query: UsageQuery,
    *,
    line_items: Sequence[str] | None,
    now: int | None = None,
) -> UsageResponse[CostsResult]:
    """`GET /v1/organization/costs`: dollars per day and group, from usage and the configured prices."""
    if query.user_ids is not None:
        raise unsupported("user_ids", "cannot be honoured: Tunewright attributes usage to projects and API keys")
    groups = parse_group_by(query.group_by, COSTS_GROUPS)
    page = plan_page(query, widths=COSTS_WIDTHS, now=int(time.time()) if now is None else now)
    window = page.window(organization_id(stores, principal), query)
    lines = [] if page.count == 0 else cost_lines(stores, settings, window)
    wanted = None if line_items is None else set(line_items)
    sums: dict[tuple[int, str | None, str | None, str | None], CostSum] = defaultdict(CostSum)
    for line in lines:
        if wanted is not None and line.line_item not in wanted:
            continue
        key = (
            line.bucket,
            line.project_id if "project_id" in groups else None,
            line.api_key_id if "api_key_id" in groups else None,
            line.line_item if "line_item" in groups else None,
        )
        total = sums[key]
        total.quantity += line.quantity
        total.amount += line.amount
        total.units.add(line.unit)
    results: dict[int, list[CostsResult]] = defaultdict(list)
    for (bucket, project_id, api_key_id, line_item), total in sorted(sums.items(), key=lambda kv: _order(kv[0])):
        itemized = line_item is not None
        results[bucket].append(
            CostsResult(
                amount=CostsResultAmount(value=float(total.amount)),
                line_item=line_item,
                project_id=project_id,
                api_key_id=api_key_id,
                quantity=float(total.quantity) if itemized else None,
                quantity_unit=next(iter(total.units)) if itemized else None,
                user_id=None if "user_id" in groups else UNSET,
                api_source="unlabeled" if "api_source" in groups else UNSET,
            )
        )
    return page.response(results)


def _order(key: tuple[int, str | None, str | None, str | None]) -> tuple[Any, ...]:
    """Results in bucket order, then by project, key and line item (a null first)."""
    return tuple(value if isinstance(value, int) else (value is not None, value or "") for value in key)

"""Spend enforcement: month-to-date cost against the hard limits of projects and organizations; spend alerts.

Spend. A project's spend this month is the cost of its usage since the first second of the current UTC month,
priced exactly as `GET /v1/organization/costs` prices it (`api/usage/service.py:cost_lines`: inference input
and output, training, storage, at the configured prices); an organization's is the sum over its projects. A
project whose spend has reached its own limit, or whose organization's spend has reached the organization's
limit, gets 429 `insufficient_quota` (`x-should-retry: false`) on /v1/chat/completions, /v1/completions and job
creation; a job whose estimated cost would take either spend past its limit is refused too.

Cost of the check. Each API process keeps a project's standing (its limit and spend) and its organization's for
`spend_cache_s` seconds (default 2): a request within that time costs two dictionary lookups. So a project (or an
organization) may overshoot its limit by what it spends in that window in each process (requests admitted
before the cache notices), plus what the requests in flight when it reaches the limit still generate; a limit
changed through another process applies within the same window (at once in the process that changed it).

Alerts. When a project's standing is refreshed, its alerts and its organization's alerts not yet fired this
month are compared with the month's spend (the project's, or the organization's for an organization alert); a
crossed one fires once a month: `fire_spend_alert` marks it and writes a `spend_alert.triggered` webhook event
(storage/outbox.py) to the subscribed endpoints in one transaction. The API's sweeper checks every project's
alerts too, so spend that accrues without requests (training, storage) is noticed within `sweep_every_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import anyio.to_thread

from tunewright.api.errors import InsufficientQuotaError
from tunewright.api.usage.service import cost_lines
from tunewright.storage.errors import NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.outbox import SPEND_ALERT_EVENT, event_body, spend_alert_data
from tunewright.storage.records import UsageWindow

if TYPE_CHECKING:
    from collections.abc import Callable

    from tunewright.api.auth import Principal
    from tunewright.storage.base import Stores
    from tunewright.storage.records import SpendAlertRecord, SpendLimitRecord
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)

CENTS = Decimal(100)
QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."


@dataclass(frozen=True, slots=True)
class Standing:
    """A scope's hard limit (cents, None: no limit) and its spend this month (cents), as of `month`.

    The scope is a project, or an organization (all its projects' spend); `owner` names it in messages
    ("Project proj_…", "Organization org-…").
    """

    limit: int | None
    spent: Decimal
    month: int
    owner: str = ""

    @property
    def reached(self) -> bool:
        """True when the scope may spend no more this month."""
        return self.limit is not None and self.spent >= self.limit

    def left(self) -> Decimal | None:
        """Cents left this month; None without a limit."""
        return None if self.limit is None else max(Decimal(0), self.limit - self.spent)


@dataclass(frozen=True, slots=True)
class Standings:
    """What may stop a project spending: its own standing and its organization's."""

    project: Standing
    organization: Standing

    @property
    def limited(self) -> bool:
        """True when the project or its organization has a limit."""
        return self.project.limit is not None or self.organization.limit is not None

    def refusing(self, cents: Decimal = Decimal(0)) -> Standing | None:
        """The standing that refuses `cents` more of spend: one whose limit is reached, else one that leaves less."""
        for state in (self.project, self.organization):
            if state.reached:
                return state
        for state in (self.project, self.organization):
            left = state.left()
            if left is not None and cents > left:
                return state
        return None


def month_start(now: float) -> int:
    """The first second (unix, UTC) of the calendar month holding `now`."""
    day = datetime.fromtimestamp(now, UTC)
    return int(datetime(day.year, day.month, 1, tzinfo=UTC).timestamp())


def month_to_date(
    stores: Stores, settings: Settings, *, organization_id: str, project_id: str | None, now: float
) -> Decimal:
    """Cents spent this month by a project (or by the whole organization when `project_id` is None)."""
    start, end = month_start(now), int(now) + 1
    window = UsageWindow(
        organization_id=organization_id,
        origin=start,
        width=end - start,
        start=start,
        end=end,
        project_ids=None if project_id is None else (project_id,),
    )
    return sum((line.amount for line in cost_lines(stores, settings, window)), Decimal(0)) * CENTS


class StandingCache:
    """Each project's and organization's standing for `spend_cache_s` seconds in this process, by its id."""

    def __init__(self) -> None:
        """Start empty."""
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Standing]] = {}

    def get(self, scope_id: str, *, now: float) -> Standing | None:
        """The cached standing of a project or organization, if still fresh."""
        entry = self._entries.get(scope_id)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def put(self, scope_id: str, standing: Standing, *, until: float) -> None:
        """Keep a standing until `until` (monotonic seconds)."""
        with self._lock:
            self._entries[scope_id] = (until, standing)

    def through(self, scope_id: str, read: Callable[[], Standing], *, ttl: float, cached: bool = True) -> Standing:
        """The standing of `scope_id` from the cache when fresh (and `cached`), else `read()`'s, kept `ttl` seconds."""
        if cached:
            fresh = self.get(scope_id, now=time.monotonic())
            if fresh is not None:
                return fresh
        result = read()
        self.put(scope_id, result, until=time.monotonic() + ttl)
        return result

    def forget(self, scope_id: str) -> None:
        """Drop a project's or organization's standing (its limit changed here)."""
        with self._lock:
            self._entries.pop(scope_id, None)


CACHE = StandingCache()


def standing(
    stores: Stores,
    settings: Settings,
    *,
    organization_id: str,
    project_id: str,
    cached: bool = True,
    known: dict[tuple[str, str | None], Decimal] | None = None,
) -> Standing:
    """A project's standing: from this process's cache when fresh, else read (firing any crossed alert).

    `known` holds spend already read, by `(organization_id, project_id)` (None: the organization's), so that
    alerts do not read it again.
    """

    def read() -> Standing:
        now = time.time()
        limit = _limit(lambda: stores.metadata.get_spend_limit(project_id))
        alerts = due_alerts(stores, organization_id=organization_id, project_id=project_id, now=now)
        spent, spends = Decimal(0), dict(known or {})
        if limit is not None or any(alert.project_id is not None for alert in alerts):
            spent = month_to_date(stores, settings, organization_id=organization_id, project_id=project_id, now=now)
            spends[organization_id, project_id] = spent
        fire_crossed(stores, settings, alerts, now=now, known=spends)
        return Standing(limit=limit, spent=spent, month=month_start(now), owner=f"Project {project_id}")

    return CACHE.through(project_id, read, ttl=settings.spend_cache_s, cached=cached)


def organization_standing(stores: Stores, settings: Settings, *, organization_id: str, cached: bool = True) -> Standing:
    """An organization's standing on its own limit (its spend: all its projects'), cached as a project's is."""

    def read() -> Standing:
        now = time.time()
        limit = _limit(lambda: stores.metadata.get_organization_spend_limit(organization_id))
        spent = Decimal(0)
        if limit is not None:
            spent = month_to_date(stores, settings, organization_id=organization_id, project_id=None, now=now)
        return Standing(limit=limit, spent=spent, month=month_start(now), owner=f"Organization {organization_id}")

    return CACHE.through(organization_id, read, ttl=settings.spend_cache_s, cached=cached)


def standings(
    stores: Stores, settings: Settings, *, organization_id: str, project_id: str, cached: bool = True
) -> Standings:
    """The project's standing and its organization's; the organization's spend, once read, serves its alerts."""
    organization = organization_standing(stores, settings, organization_id=organization_id, cached=cached)
    known: dict[tuple[str, str | None], Decimal] = {}
    if organization.limit is not None and organization.month == month_start(time.time()):
        known[organization_id, None] = organization.spent
    project = standing(
        stores, settings, organization_id=organization_id, project_id=project_id, cached=cached, known=known
    )
    return Standings(project=project, organization=organization)


def _limit(read: Callable[[], SpendLimitRecord]) -> int | None:
    """The threshold of a stored limit; None when there is none."""
    try:
        return read().threshold_amount
    except NotFound:
        return None


def quota_error(state: Standing, *, extra: str = "") -> InsufficientQuotaError:
    """429 `insufficient_quota`, OpenAI's message with the figures of the limit that refused."""
    return InsufficientQuotaError(
        f"{QUOTA_MESSAGE} {state.owner} has spent ${state.spent / CENTS:.2f} of its monthly spend limit of "
        f"${Decimal(state.limit or 0) / CENTS:.2f}.{extra}"
    )


async def admit_inference(stores: Stores, settings: Settings, principal: Principal) -> None:
    """Refuse a completion request of a project at or over its or its organization's limit (429)."""
    project_id = principal.project_id
    if project_id is None:
        return
    organization_id = principal.organization_id or ""
    now = time.monotonic()
    project, organization = CACHE.get(project_id, now=now), CACHE.get(organization_id, now=now)
    if project is not None and organization is not None:
        state = Standings(project=project, organization=organization)
    else:
        state = await anyio.to_thread.run_sync(
            lambda: standings(stores, settings, organization_id=organization_id, project_id=project_id)
        )
    refused = state.refusing()
    if refused is not None:
        raise quota_error(refused)


def admit_job(
    stores: Stores, settings: Settings, principal: Principal, *, estimated_cost: Callable[[], Decimal | None]
) -> None:
    """Refuse a job of a project at or over a limit, or whose estimated cost (dollars) is more than one leaves.

    The limits are the project's and its organization's. `estimated_cost` is called only when one of them is
    set and not reached (it tokenizes the files); None from it (the cost cannot be known here) admits the job.
    """
    project_id = principal.project_id
    if project_id is None:
        return
    state = standings(stores, settings, organization_id=principal.organization_id or "", project_id=project_id)
    refused = state.refusing()
    if refused is not None:
        raise quota_error(refused)
    if not state.limited:
        return
    cost = estimated_cost()
    refused = None if cost is None else state.refusing(cost * CENTS)
    if refused is not None:
        raise quota_error(refused, extra=f" This job's estimated cost, ${cost:.2f}, is more than is left.")


def due_alerts(stores: Stores, *, organization_id: str, project_id: str, now: float) -> list[SpendAlertRecord]:
    """The project's and its organization's alerts that have not fired this month."""
    month = month_start(now)
    alerts = [
        *stores.metadata.list_spend_alerts(organization_id=organization_id, project_id=project_id),
        *stores.metadata.list_spend_alerts(organization_id=organization_id, project_id=None),
    ]
    return [alert for alert in alerts if alert.fired_month is None or alert.fired_month < month]


def fire_crossed(
    stores: Stores,
    settings: Settings,
    alerts: list[SpendAlertRecord],
    *,
    now: float,
    known: dict[tuple[str, str | None], Decimal] | None = None,
) -> int:
    """Fire each alert whose threshold its scope's spend this month has reached; return how many fired.

    The scope is the alert's project, or its organization for an organization alert; `known` holds spend
    already read, by `(organization_id, project_id)`.
    """
    spent = dict(known or {})
    fired = 0
    for alert in alerts:
        scope = (alert.organization_id, alert.project_id)
        if scope not in spent:
            spent[scope] = month_to_date(
                stores, settings, organization_id=alert.organization_id, project_id=alert.project_id, now=now
            )
        if spent[scope] >= alert.threshold_amount:
            fire(stores, alert, spent=spent[scope], now=now)
            fired += 1
    return fired


def fire(stores: Stores, alert: SpendAlertRecord, *, spent: Decimal, now: float) -> None:
    """Mark an alert fired this month and write its `spend_alert.triggered` event to the outbox (once a month)."""
    event_id = new_id("webhook_event")
    data = spend_alert_data(
        alert.id,
        project_id=alert.project_id,
        threshold_amount=alert.threshold_amount,
        month_start=month_start(now),
        spent_cents=int(spent),
    )
    payload = event_body(event_id, SPEND_ALERT_EVENT, data, created_at=int(now))
    sent = stores.metadata.fire_spend_alert(
        alert, month=month_start(now), event_type=SPEND_ALERT_EVENT, event_id=event_id, payload=payload, now=now
    )
    if sent is not None:
        logger.info("spend alert %s crossed: %s deliveries", alert.id, sent, extra={"alert_id": alert.id})


def check_all_alerts(stores: Stores, settings: Settings, *, now: float | None = None) -> int:
    """Fire every crossed alert of every organization (the sweeper's pass); return how many fired."""
    now = time.time() if now is None else now
    return fire_crossed(stores, settings, stores.metadata.list_due_spend_alerts(month=month_start(now)), now=now)

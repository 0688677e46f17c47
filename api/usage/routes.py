"""HTTP routes of /v1/organization/usage/… and /v1/organization/costs: decode, one service call. Admin keys only."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery

from tunewright.api.auth import Caller, require_admin
from tunewright.api.dependencies import AppSettings, AppStores
from tunewright.api.pagination import query_list
from tunewright.api.usage import service
from tunewright.api.usage.schemas import CostsResult, UsageCompletionsResult, UsageFineTuningResult, UsageResponse


def provide_usage_query(
    request: Request[Any, Any, Any],
    start_time: FromQuery[int | None] = None,
    end_time: FromQuery[int | None] = None,
    bucket_width: FromQuery[str] = "1d",
    limit: FromQuery[int | None] = None,
    page: FromQuery[str | None] = None,
) -> service.UsageQuery:
    """The parameters every route here shares: scalars decoded by Litestar, arrays read from the raw query."""
    raw = request.query_params
    return service.UsageQuery(
        start_time=start_time,
        end_time=end_time,
        bucket_width=bucket_width,
        limit=limit,
        page=page,
        group_by=query_list(raw, "group_by") or (),
        project_ids=query_list(raw, "project_ids"),
        api_key_ids=query_list(raw, "api_key_ids"),
        models=query_list(raw, "models"),
        user_ids=query_list(raw, "user_ids"),
    )


UsageQueryParams = NamedDependency[service.UsageQuery]
"""`usage_query: UsageQueryParams`: the shared parameters, from `provide_usage_query`."""


class UsageController(Controller):
    """`/v1/organization/usage/…` and `/v1/organization/costs`: the caller's organization, in time buckets."""

    path = "/v1/organization"
    guards = [require_admin]
    dependencies = {"usage_query": Provide(provide_usage_query, sync_to_thread=False)}
    tags = ["Usage"]

    @get("/usage/completions", sync_to_thread=True)
    def usage_completions(
        self,
        stores: AppStores,
        principal: Caller,
        usage_query: UsageQueryParams,
        batch: FromQuery[bool | None] = None,
    ) -> UsageResponse[UsageCompletionsResult]:
        """Chat and legacy completion tokens per time bucket, grouped and filtered as OpenAI's."""
        return service.completions_usage(stores, principal, usage_query, batch=batch)

    @get("/usage/fine_tuning", sync_to_thread=True)
    def usage_fine_tuning(
        self, stores: AppStores, principal: Caller, usage_query: UsageQueryParams
    ) -> UsageResponse[UsageFineTuningResult]:
        """Tunewright extension: trained tokens and jobs per time bucket; `group_by[]` project_id and model."""
        return service.fine_tuning_usage(stores, principal, usage_query)

    @get("/costs", sync_to_thread=True)
    def costs(
        self,
        request: Request[Any, Any, Any],
        stores: AppStores,
        settings: AppSettings,
        principal: Caller,
        usage_query: UsageQueryParams,
    ) -> UsageResponse[CostsResult]:
        """Dollars per day from metered usage and the configured prices; `group_by[]`, `line_items[]`."""
        line_items = query_list(request.query_params, "line_items")
        return service.costs(stores, settings, principal, usage_query, line_items=line_items)


ROUTES = [UsageController]

"""Wire objects of /v1/organization/usage/… and /v1/organization/costs.

Field order, `object` strings and nullability follow OpenAI's OpenAPI document (`UsageResponse`,
`UsageTimeBucket`, `UsageCompletionsResult`, `CostsResult`) and the openai SDK's types, which add `api_source`
(sent only when grouped by it). `UsageFineTuningResult` is Tunewright's, shaped like the others.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from msgspec import UNSET, UnsetType

from tunewright.api.schemas import Response

T = TypeVar("T")

ApiSource = Literal["agents_api", "unlabeled"]


class UsageCompletionsResult(Response, kw_only=True):
    """`UsageCompletionsResult`: tokens of one bucket and group; the grouped fields are null when not grouped.

    Every token is text and none is cached (no prompt cache here): the cached, audio and image counts are 0.
    """

    object: Literal["organization.usage.completions.result"] = "organization.usage.completions.result"
    input_tokens: int
    input_cached_tokens: int = 0
    input_cache_write_tokens: int = 0
    input_uncached_tokens: int
    output_tokens: int
    input_text_tokens: int
    output_text_tokens: int
    input_cached_text_tokens: int = 0
    input_audio_tokens: int = 0
    input_cached_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    input_cached_image_tokens: int = 0
    output_image_tokens: int = 0
    num_model_requests: int
    project_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None
    model: str | None = None
    batch: bool | None = None
    service_tier: str | None = None
    api_source: ApiSource | UnsetType = UNSET


class UsageFineTuningResult(Response, kw_only=True):
    """Tunewright's fine-tuning usage of one bucket and group: trained tokens and the jobs they belong to."""

    object: Literal["organization.usage.fine_tuning.result"] = "organization.usage.fine_tuning.result"
    trained_tokens: int
    num_jobs: int
    project_id: str | None = None
    model: str | None = None


class CostsResultAmount(Response, kw_only=True):
    """`CostsResult.amount`: dollars."""

    value: float
    currency: str = "usd"


class CostsResult(Response, kw_only=True):
    """`CostsResult`: the cost of one bucket and group; `quantity` and its unit only when grouped by line item."""

    object: Literal["organization.costs.result"] = "organization.costs.result"
    amount: CostsResultAmount
    line_item: str | None = None
    project_id: str | None = None
    api_key_id: str | None = None
    quantity: float | None = None
    quantity_unit: str | None = None
    user_id: str | None | UnsetType = UNSET
    api_source: ApiSource | UnsetType = UNSET


class UsageTimeBucket(Response, Generic[T], kw_only=True):
    """`UsageTimeBucket`: one time bucket, `[start_time, end_time)`, and its results."""

    object: Literal["bucket"] = "bucket"
    start_time: int
    end_time: int
    results: list[T]


class UsageResponse(Response, Generic[T], kw_only=True):
    """`UsageResponse`: a page of buckets; `next_page` is the cursor of the next one (null on the last)."""

    object: Literal["page"] = "page"
    data: list[UsageTimeBucket[T]]
    has_more: bool
    next_page: str | None

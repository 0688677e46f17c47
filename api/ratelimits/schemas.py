"""Wire objects of /v1/organization/projects/{project_id}/rate_limits, as OpenAI's `ProjectRateLimit`.

Field order and optionality follow OpenAI's OpenAPI document. `max_requests_per_1_day` is "only present for
relevant models": here, for the models that have a daily limit. Images, audio and batches are not served here, so
their limits are never sent and cannot be set.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, UnsetType

from tunewright.api.schemas import Request, Response

MAX_LIMIT_VALUE = 10**12
PositiveLimit = Annotated[int, Meta(ge=1, le=MAX_LIMIT_VALUE)]


class ProjectRateLimit(Response, kw_only=True):
    """`ProjectRateLimit`: one base model's limits in one project (what an admin set, else the defaults)."""

    object: Literal["project.rate_limit"] = "project.rate_limit"
    id: str
    model: str
    max_requests_per_1_minute: int
    max_tokens_per_1_minute: int
    max_images_per_1_minute: int | UnsetType = UNSET
    max_audio_megabytes_per_1_minute: int | UnsetType = UNSET
    max_requests_per_1_day: int | UnsetType = UNSET
    batch_1_day_max_input_tokens: int | UnsetType = UNSET


class ProjectRateLimitUpdateRequest(Request, kw_only=True):
    """`ProjectRateLimitUpdateRequest`: only the fields sent change.

    `max_requests_per_1_day: 0` removes the daily limit. The image, audio and batch limits are declared (the SDK
    sends them when asked) and refused by the service: nothing here would apply them.
    """

    max_requests_per_1_minute: PositiveLimit | UnsetType = UNSET
    max_tokens_per_1_minute: PositiveLimit | UnsetType = UNSET
    max_images_per_1_minute: int | UnsetType = UNSET
    max_audio_megabytes_per_1_minute: int | UnsetType = UNSET
    max_requests_per_1_day: Annotated[int, Meta(ge=0, le=MAX_LIMIT_VALUE)] | UnsetType = UNSET
    batch_1_day_max_input_tokens: int | UnsetType = UNSET

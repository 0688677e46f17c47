"""Wire objects of /v1/fine_tuning/alpha/graders: `RunGraderRequest/Response`, `ValidateGraderRequest/Response`.

The grader itself is decoded by `tunewright.graders.parse_grader` (strictly, with errors naming its path), so it
travels here as a JSON object.
"""

from __future__ import annotations

from typing import Any

from msgspec import UNSET, UnsetType

from tunewright.api.schemas import Request, Response
from tunewright.graders import GradeErrors, TokenUsage


class ValidateGraderRequest(Request):
    """`ValidateGraderRequest`."""

    grader: dict[str, Any]


class ValidateGraderResponse(Response):
    """`ValidateGraderResponse`: the grader as it was sent."""

    grader: dict[str, Any]


class RunGraderRequest(Request):
    """`RunGraderRequest`: the grader, the model's output (`sample.output_text`) and the dataset item."""

    grader: dict[str, Any]
    model_sample: str
    item: dict[str, Any] | None | UnsetType = UNSET


class RunGraderMetadata(Response):
    """`RunGraderResponse.metadata`: the grader, its error flags, how long it took, and its model's tokens."""

    name: str
    type: str
    errors: GradeErrors
    execution_time: float
    scores: dict[str, Any]
    token_usage: int | None
    sampled_model_name: str | None


class RunGraderResponse(Response):
    """`RunGraderResponse`."""

    reward: float
    metadata: RunGraderMetadata
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, TokenUsage]

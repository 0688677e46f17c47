"""OpenAI's grader objects as msgspec Structs, decoded strictly.

An unknown or mistyped field is a `GraderError` naming its path (`grader.graders.a.operation`).

The shapes are those of OpenAI's OpenAPI document and SDK (`GraderStringCheck`, `GraderTextSimilarity`,
`GraderPython`, `GraderScoreModel`, `GraderLabelModel`, `GraderMulti`). A top-level grader (what `runGrader`,
`validateGrader` and a reinforcement job's `method.reinforcement.grader` take) is any of them but `label_model`,
which OpenAI allows only inside a multi grader. A multi grader's `graders` is taken in the three spellings OpenAI
has published: an object of sub-graders by name (the graders guide; the names are what `calculate_output` reads),
a single sub-grader (the OpenAPI schema and the SDK types) and a list (the schema's example); the latter two are
named by their `name`. Sub-graders cannot be multi graders.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from tunewright.graders.errors import GraderError


class Wire(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of the grader objects: unknown fields are refused, unset ones are left out when echoed."""


# ------------------------------------------------------------------------------------ message input


class InputText(Wire, tag_field="type", tag="input_text"):
    """`InputTextContent`: a text part (may hold templates)."""

    text: str
    prompt_cache_breakpoint: dict[str, Any] | UnsetType = UNSET


class OutputText(Wire, tag_field="type", tag="output_text"):
    """`EvalItemContentOutputText`: text an assistant wrote (may hold templates)."""

    text: str


class InputImage(Wire, tag_field="type", tag="input_image"):
    """`EvalItemInputImage` (declared; the models served here read text only, so a grader holding one is refused)."""

    image_url: str
    detail: str | None | UnsetType = UNSET
    file_id: str | None | UnsetType = UNSET


class InputAudioData(Wire):
    """The audio of an `InputAudio` part."""

    data: str
    format: Literal["mp3", "wav"]


class InputAudio(Wire, tag_field="type", tag="input_audio"):
    """`InputAudio` (declared; refused like images)."""

    input_audio: InputAudioData


ContentItem = str | InputText | OutputText | InputImage | InputAudio
Content = ContentItem | list[ContentItem]


class EvalItem(Wire):
    """`EvalItem`: one message of a model grader's input."""

    role: Literal["user", "assistant", "system", "developer"]
    content: Content
    type: Literal["message"] | UnsetType = UNSET


# ------------------------------------------------------------------------------------------ graders


class StringCheckGrader(Wire, tag_field="type", tag="string_check"):
    """`GraderStringCheck`: 1 when `input` and `reference` (both templated) pass `operation`, else 0."""

    name: str
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(Wire, tag_field="type", tag="text_similarity"):
    """`GraderTextSimilarity`: `input` scored against `reference` by `evaluation_metric` (graders/metrics.py)."""

    name: str
    input: str
    reference: str
    evaluation_metric: Literal[
        "cosine",
        "fuzzy_match",
        "bleu",
        "gleu",
        "meteor",
        "rouge_1",
        "rouge_2",
        "rouge_3",
        "rouge_4",
        "rouge_5",
        "rouge_l",
    ]


class PythonGrader(Wire, tag_field="type", tag="python"):
    """`GraderPython`: `source` defines `grade(sample, item) -> float`; `image_tag` is accepted and unused."""

    name: str
    source: str
    image_tag: str | UnsetType = UNSET


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class SamplingParams(Wire):
    """A score model grader's `sampling_params`; `reasoning_effort` is accepted and ignored (no model here reasons).

    Ranges are those of chat completions (temperature 0-2, top_p 0-1), which the grader's model call is.
    """

    seed: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | None | UnsetType = UNSET
    top_p: Annotated[float, Meta(ge=0, le=1)] | None | UnsetType = UNSET
    temperature: Annotated[float, Meta(ge=0, le=2)] | None | UnsetType = UNSET
    max_completions_tokens: Annotated[int, Meta(ge=1)] | None | UnsetType = UNSET
    reasoning_effort: ReasoningEffort | None | UnsetType = UNSET


class ScoreModelGrader(Wire, tag_field="type", tag="score_model"):
    """`GraderScoreModel`: a model reads the (templated) input messages and answers a score within `range`."""

    name: str
    input: list[EvalItem]
    model: str
    sampling_params: SamplingParams | None | UnsetType = UNSET
    range: list[float] | None | UnsetType = UNSET

    @property
    def score_range(self) -> tuple[float, float]:
        """`range`, or `[0, 1]` when not given."""
        if isinstance(self.range, list):
            return self.range[0], self.range[1]
        return 0.0, 1.0


class LabelModelGrader(Wire, tag_field="type", tag="label_model"):
    """`GraderLabelModel`: a model picks one of `labels`; 1 when it is one of `passing_labels`, else 0."""

    name: str
    model: str
    input: list[EvalItem]
    labels: list[str]
    passing_labels: list[str]


class MultiGrader(Wire, tag_field="type", tag="multi"):
    """`GraderMulti`: `calculate_output` over the sub-graders' rewards, by name.

    `graders` holds, once decoded by `parse_grader`, a sub-grader, a list of them or an object of them by name
    (as sent; `named_graders` gives them by name).
    """

    name: str
    graders: Any
    calculate_output: str


SubGrader = StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader
Grader = StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | MultiGrader
AnyGrader = SubGrader | MultiGrader
ModelGrader = ScoreModelGrader | LabelModelGrader

GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "multi")
SUB_GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model")


# ---------------------------------------------------------------------------------------- decoding


def parse_grader(value: Any, *, param: str = "grader") -> Grader:
    """Decode a top-level grader from JSON-like builtins (a dict), strictly.

    Raises:
        GraderError: not an object, an unknown or missing `type`, or any field unknown, missing or of the
            wrong type or range, with `param` the path to it.
    """
    if not isinstance(value, dict):
        raise GraderError(f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
    kind = value.get("type")
    if kind == "label_model":
        raise GraderError(
            f"Invalid value for '{param}.type': a label_model grader can only be one of a multi grader's graders.",
            param=f"{param}.type",
        )
    grader: Grader = _convert(value, Grader, param, GRADER_TYPES)
    if isinstance(grader, MultiGrader):
        grader.graders = _parse_sub_graders(grader.graders, f"{param}.graders")
    return grader


def _parse_sub_graders(value: Any, param: str) -> SubGrader | list[SubGrader] | dict[str, SubGrader]:
    """A multi grader's `graders`: one sub-grader (an object whose `type` is a string), a list, or a map."""
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return _sub_grader(value, param)
    if isinstance(value, list):
        if not value:
            raise GraderError(f"Invalid value for '{param}': a multi grader needs at least one grader.", param=param)
        return [_sub_grader(item, f"{param}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        if not value:
            raise GraderError(f"Invalid value for '{param}': a multi grader needs at least one grader.", param=param)
        return {key: _sub_grader(item, f"{param}.{key}") for key, item in value.items()}
    raise GraderError(
        f"Invalid type for '{param}': expected an object of graders by name (or one grader).",
        param=param,
        code="invalid_type",
    )


def _sub_grader(value: Any, param: str) -> SubGrader:
    if not isinstance(value, dict):
        raise GraderError(f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
    if value.get("type") == "multi":
        raise GraderError(
            f"Invalid value for '{param}.type': a multi grader's graders cannot be multi graders.",
            param=f"{param}.type",
        )
    return _convert(value, SubGrader, param, SUB_GRADER_TYPES)


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _convert(value: dict[str, Any], kind: Any, param: str, types: tuple[str, ...]) -> Any:
    """`msgspec.convert` with its error turned into a `GraderError` naming the path under `param`."""
    if "type" not in value:
        raise GraderError(
            f"Missing required parameter: '{param}.type' (one of {', '.join(types)}).",
            param=f"{param}.type",
            code="missing_required_parameter",
        )
    try:
        return msgspec.convert(value, kind, strict=True)
    except msgspec.ValidationError as exc:
        raise _validation_error(str(exc), param, types) from None


def _validation_error(text: str, param: str, types: tuple[str, ...]) -> GraderError:
    """The `GraderError` of a msgspec message (`Object contains unknown field `x` - at `$.a``)."""
    match = _AT.search(text)
    message = text[: match.start()] if match else text
    where = param + (match.group("path") if match else "")
    for marker, code in (
        ("unknown field `", "unknown_parameter"),
        ("missing required field `", "missing_required_parameter"),
    ):
        if marker in message:
            field = f"{where}.{message.split(marker, 1)[1].split('`', 1)[0]}"
            if code == "unknown_parameter":
                return GraderError(f"Unrecognized parameter: '{field}'.", param=field, code=code)
            return GraderError(f"Missing required parameter: '{field}'.", param=field, code=code)
    if where == f"{param}.type" and message.startswith("Invalid value"):
        return GraderError(
            f"Invalid value for '{where}': {message.removeprefix('Invalid value ')} is not one of {', '.join(types)}.",
            param=where,
        )
    code = "invalid_type" if ", got `" in message else "invalid_value"
    return GraderError(f"Invalid value for '{where}': {message}.", param=where, code=code)


def named_graders(grader: MultiGrader) -> dict[str, SubGrader]:
    """A multi grader's sub-graders by the name its formula uses: the key, or the grader's `name`."""
    graders = grader.graders
    if isinstance(graders, dict):
        return dict(graders)
    if isinstance(graders, list):
        return {sub.name: sub for sub in graders}
    return {graders.name: graders}


def grader_type(grader: AnyGrader) -> str:
    """A grader's `type` (its tag)."""
    return str(type(grader).__struct_config__.tag)


def encode_grader(grader: Grader) -> dict[str, Any]:
    """The grader as JSON-like builtins, as it was sent (unset fields left out)."""
    return msgspec.to_builtins(grader)

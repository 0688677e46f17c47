"""Grading one sample: `grade(grader, sample, item, runtime)` → `GradeResult`.

This is what `POST /v1/fine_tuning/alpha/graders/run` answers and what a reinforcement trainer calls for each
sample. A grader is checked first (`Runtime.check`, which raises `GraderError`); grading itself never raises for
what a sample or a grader's code does: a failure gives reward 0 and sets the matching flag of OpenAI's
`metadata.errors`:

- `sample_parse_error`: a template reads `sample.output_json` of a sample that is not valid JSON;
- `invalid_variable_error`: a template names a variable the sample (or item) does not have;
- `truncated_observation_error`: the sample was cut at its token budget (it is still graded);
- `formula_parse_error`: a multi grader's formula cannot be computed (division by zero, `sqrt(-1)`, …);
- `python_grader_runtime_error` (+ details): the python grader raised, returned no number, or its process died;
  with `unresponsive_reward_error` too when it ran out of wall or CPU time;
- `python_grader_server_error` (+ type): the sandbox could not run it;
- `model_grader_server_error` (+ details): the model call failed (the sampler raised `ModelGraderError`);
- `model_grader_parse_error`: the model's answer holds no score (or no label);
- `other_error`: anything else (a metric that failed).

A multi grader grades every sub-grader (a failed one counts 0), computes its formula over their rewards, and
reports their flags together. Model graders call a `ModelSampler`, so the API passes its inference engine and a
trainer its own; their token usage is summed per model.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import UNSET

from tunewright.graders.errors import GraderError
from tunewright.graders.formula import FormulaError, parse_formula
from tunewright.graders.metrics import Embedder, similarity
from tunewright.graders.sandbox import SandboxLimits, run_python
from tunewright.graders.schemas import (
    EvalItem,
    Grader,
    InputText,
    LabelModelGrader,
    MultiGrader,
    OutputText,
    PythonGrader,
    SamplingParams,
    ScoreModelGrader,
    StringCheckGrader,
    SubGrader,
    TextSimilarityGrader,
    grader_type,
    named_graders,
)
from tunewright.graders.templates import Sample, TemplateError, render
from tunewright.graders.validation import check_grader, content_parts


class ModelReply(msgspec.Struct, kw_only=True, frozen=True):
    """What a model grader's model answered, with its token usage.

    Attributes:
        text: The answer's text.
        prompt_tokens: Tokens of the rendered input messages.
        completion_tokens: Tokens generated.
        model: The model that answered (defaults to the one asked).
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None


ModelSampler = Callable[[str, list[dict[str, Any]], SamplingParams], "str | ModelReply"]
"""`(model, messages, sampling_params) -> text or ModelReply`: one chat completion for a model grader.

`messages` are chat messages (`{"role", "content"}`, the content a string or a list of `{"type": "text", "text"}`
parts), already templated. Raise `ModelGraderError` for a failure that should be the grader's error; anything
else propagates out of `grade` to its caller.
"""


class ModelGraderError(Exception):
    """Raised by a `ModelSampler`: the model call failed; graded as `model_grader_server_error` with the message."""


@dataclass(frozen=True)
class Runtime:
    """What a grader may use where it runs.

    Attributes:
        sample_model: The model sampler of `score_model` and `label_model` graders (None: they are refused).
        python: Limits of python graders (None: python graders are refused).
        embed: The embedding function of the `cosine` metric (None: it is refused).
    """

    sample_model: ModelSampler | None = None
    python: SandboxLimits | None = None
    embed: Embedder | None = None

    def check(self, grader: Grader, *, param: str = "grader", item: Any = UNSET) -> None:
        """Refuse a grader this runtime cannot run (and, given an item, one whose item templates it cannot fill).

        Raises:
            GraderError: naming the path of the first problem.
        """
        if self.sample_model is None:
            for where, _model in model_graders(grader, param):
                raise GraderError(
                    f"Unsupported value for '{where}': model graders are not available here.",
                    param=where,
                    code="unsupported_value",
                )
        check_grader(
            grader,
            param=param,
            python_enabled=self.python is not None,
            cosine_enabled=self.embed is not None,
            item=item,
        )


class GradeErrors(msgspec.Struct, kw_only=True):
    """OpenAI's `metadata.errors`: every flag, in its schema's order."""

    formula_parse_error: bool = False
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False
    invalid_variable_error: bool = False
    other_error: bool = False
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    model_grader_server_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_server_error_details: str | None = None

    def any(self) -> bool:
        """Whether any flag is set."""
        return any(value is True for value in msgspec.structs.astuple(self))

    def merge(self, other: GradeErrors) -> None:
        """Set the flags `other` sets; keep the first details of each kind."""
        for field in self.__struct_fields__:
            mine, theirs = getattr(self, field), getattr(other, field)
            if theirs is True or (mine is None and theirs is not None):
                setattr(self, field, theirs)


class TokenUsage(msgspec.Struct, kw_only=True):
    """Token usage of a model grader's calls to one model."""

    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, prompt: int, completion: int) -> None:
        """Count one call."""
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.total_tokens += prompt + completion


class GradeResult(msgspec.Struct, kw_only=True):
    """One grading: the reward and what OpenAI's run response reports with it.

    Attributes:
        reward: The score (0 when an error flag is set on a single grader).
        name: The grader's name.
        type: The grader's type.
        errors: OpenAI's error flags.
        execution_time: Seconds the grading took.
        sub_rewards: A multi grader's sub-graders' rewards, by name (empty otherwise).
        token_usage: Model graders' token usage, by model.
        sampled_model_name: The model a model grader called (None when none, or several).
        message: What went wrong, in a sentence (for logs and job events), or None.
    """

    reward: float
    name: str
    type: str
    errors: GradeErrors
    execution_time: float
    sub_rewards: dict[str, float] = msgspec.field(default_factory=dict)
    token_usage: dict[str, TokenUsage] = msgspec.field(default_factory=dict)
    sampled_model_name: str | None = None
    message: str | None = None

    @property
    def total_tokens(self) -> int | None:
        """All model graders' tokens, or None when no model was called."""
        return sum(usage.total_tokens for usage in self.token_usage.values()) if self.token_usage else None


def model_graders(grader: Grader | SubGrader, param: str = "grader") -> list[tuple[str, str]]:
    """(path of `model`, model) of each model grader in `grader`, sub-graders included."""
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return [(f"{param}.model", grader.model)]
    if isinstance(grader, MultiGrader):
        found = []
        graders = grader.graders
        for index, (name, sub) in enumerate(named_graders(grader).items()):
            where = (
                f"{param}.graders.{name}"
                if isinstance(graders, dict)
                else f"{param}.graders[{index}]"
                if isinstance(graders, list)
                else f"{param}.graders"
            )
            found.extend(model_graders(sub, where))
        return found
    return []


def grade(grader: Grader | SubGrader, sample: Sample, item: Any, runtime: Runtime) -> GradeResult:
    """Grade `sample` (for the dataset line `item`) with a grader that `runtime.check` accepted."""
    started = time.monotonic()
    result = _grade(grader, sample, item if isinstance(item, dict) else {}, runtime)
    if sample.truncated:
        result.errors.truncated_observation_error = True
    result.execution_time = time.monotonic() - started
    return result


def _grade(grader: Grader | SubGrader, sample: Sample, item: dict[str, Any], runtime: Runtime) -> GradeResult:
    result = GradeResult(
        reward=0.0, name=grader.name, type=grader_type(grader), errors=GradeErrors(), execution_time=0.0
    )
    try:
        if isinstance(grader, MultiGrader):
            _multi(grader, sample, item, runtime, result)
        elif isinstance(grader, StringCheckGrader):
            result.reward = _string_check(grader, sample, item)
        elif isinstance(grader, TextSimilarityGrader):
            text, reference = (
                render(grader.input, sample=sample, item=item),
                render(grader.reference, sample=sample, item=item),
            )
            result.reward = similarity(grader.evaluation_metric, text, reference, embed=runtime.embed)
        elif isinstance(grader, PythonGrader):
            _python(grader, sample, item, runtime, result)
        else:
            _model(grader, sample, item, runtime, result)
    except TemplateError as failure:
        result.reward = 0.0
        result.message = failure.message
        if failure.kind == "sample_parse":
            result.errors.sample_parse_error = True
        else:
            result.errors.invalid_variable_error = True
    except (ValueError, ArithmeticError, LookupError, TypeError) as exc:  # a metric that failed on this text
        result.reward = 0.0
        result.message = f"{type(exc).__name__}: {exc}"
        result.errors.other_error = True
    return result


def _string_check(grader: StringCheckGrader, sample: Sample, item: dict[str, Any]) -> float:
    """1 or 0: `eq`/`ne` compare exactly; `like` is "contains" (case-sensitive), `ilike` the same ignoring case."""
    text = render(grader.input, sample=sample, item=item)
    reference = render(grader.reference, sample=sample, item=item)
    if grader.operation == "eq":
        passed = text == reference
    elif grader.operation == "ne":
        passed = text != reference
    elif grader.operation == "like":
        passed = reference in text
    else:
        passed = reference.casefold() in text.casefold()
    return 1.0 if passed else 0.0


def _python(grader: PythonGrader, sample: Sample, item: dict[str, Any], runtime: Runtime, result: GradeResult) -> None:
    if runtime.python is None:
        result.errors.python_grader_server_error = True
        result.errors.python_grader_server_error_type = "python_graders_disabled"
        result.message = "Python graders are disabled here."
        return
    outcome = run_python(grader.source, sample.namespace(), item, runtime.python)
    if outcome.score is not None:
        result.reward = outcome.score
        return
    result.message = outcome.details or outcome.server_error_type
    if outcome.error == "server":
        result.errors.python_grader_server_error = True
        result.errors.python_grader_server_error_type = outcome.server_error_type
        return
    result.errors.python_grader_runtime_error = True
    result.errors.python_grader_runtime_error_details = outcome.details
    if outcome.error == "timeout":
        result.errors.unresponsive_reward_error = True


def _model(
    grader: ScoreModelGrader | LabelModelGrader,
    sample: Sample,
    item: dict[str, Any],
    runtime: Runtime,
    result: GradeResult,
) -> None:
    if runtime.sample_model is None:
        result.errors.model_grader_server_error = True
        result.errors.model_grader_server_error_details = result.message = "Model graders are not available here."
        return
    messages = [_message(message, sample, item) for message in grader.input]
    params = grader.sampling_params if isinstance(grader, ScoreModelGrader) else UNSET
    try:
        answer = runtime.sample_model(
            grader.model, messages, params if isinstance(params, SamplingParams) else SamplingParams()
        )
    except ModelGraderError as exc:
        result.errors.model_grader_server_error = True
        result.errors.model_grader_server_error_details = result.message = str(exc) or type(exc).__name__
        return
    reply = answer if isinstance(answer, ModelReply) else ModelReply(text=answer)
    model = reply.model or grader.model
    result.sampled_model_name = model
    result.token_usage.setdefault(model, TokenUsage()).add(reply.prompt_tokens, reply.completion_tokens)
    if isinstance(grader, ScoreModelGrader):
        score = parse_score(reply.text)
        if score is not None:
            low, high = grader.score_range
            result.reward = min(high, max(low, score))
            return
        result.message = f"The model's answer holds no score: {_excerpt(reply.text)}"
    else:
        label = parse_label(reply.text, grader.labels)
        if label is not None:
            result.reward = 1.0 if label in grader.passing_labels else 0.0
            return
        result.message = f"The model's answer is none of the labels: {_excerpt(reply.text)}"
    result.errors.model_grader_parse_error = True


def _message(message: EvalItem, sample: Sample, item: dict[str, Any]) -> dict[str, Any]:
    """A grader input message as a chat message, its templates filled (images and audio were refused by `check`)."""
    if isinstance(message.content, str):
        return {"role": message.role, "content": render(message.content, sample=sample, item=item)}
    parts = []
    for _, part in content_parts(message, ""):
        text = part if isinstance(part, str) else part.text if isinstance(part, InputText | OutputText) else None
        if text is not None:
            parts.append({"type": "text", "text": render(text, sample=sample, item=item)})
    return {"role": message.role, "content": parts}


def _multi(grader: MultiGrader, sample: Sample, item: dict[str, Any], runtime: Runtime, result: GradeResult) -> None:
    names = set()
    for name, sub in named_graders(grader).items():
        sub_result = _grade(sub, sample, item, runtime)
        names.add(sub_result.sampled_model_name)
        result.sub_rewards[name] = sub_result.reward
        result.errors.merge(sub_result.errors)
        for model, usage in sub_result.token_usage.items():
            result.token_usage.setdefault(model, TokenUsage()).add(usage.prompt_tokens, usage.completion_tokens)
        if sub_result.message and result.message is None:
            result.message = f"{name}: {sub_result.message}"
    models = names - {None}
    result.sampled_model_name = models.pop() if len(models) == 1 else None
    try:
        result.reward = parse_formula(grader.calculate_output).evaluate(result.sub_rewards)
    except FormulaError as exc:
        result.reward = 0.0
        result.errors.formula_parse_error = True
        result.message = exc.message


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?```$", re.DOTALL)
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_score(text: str) -> float | None:
    """The score in a model's answer, or None.

    OpenAI's score model graders answer `{"result": <number>, …}` (their steps of reasoning beside it); here the
    answer is read as such an object (alone, in a code fence, or as the one object in the text), else as a bare
    number, else as the only number in the text.
    """
    stripped, decoded = _answer(text)
    for value in decoded:
        if isinstance(value, dict):
            value = value.get("result")
            if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
                value = float(value)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    numbers = _NUMBER.findall(stripped)
    if len(numbers) == 1:
        value = float(numbers[0])
        return value if math.isfinite(value) else None
    return None


def parse_label(text: str, labels: list[str]) -> str | None:
    """The label a model's answer gives, or None.

    Read as `{"result": "<label>"}` (OpenAI's label graders' answer), else as the label alone (quotes and a
    final period ignored), exactly or ignoring case, else as the one label that appears as a word in the text.
    """
    stripped, decoded = _answer(text)
    for value in decoded:
        if isinstance(value, dict) and value.get("result") in labels:
            return value["result"]
    bare = stripped.strip("\"'`").rstrip(".").strip()
    if bare in labels:
        return bare
    folded = [label for label in labels if label.casefold() == bare.casefold()]
    if len(folded) == 1:
        return folded[0]
    found = [label for label in labels if re.search(rf"(?<!\w){re.escape(label)}(?!\w)", stripped, flags=re.IGNORECASE)]
    return found[0] if len(found) == 1 else None


def _answer(text: str) -> tuple[str, list[Any]]:
    """A model's answer without blanks or a code fence, and the JSON values in it (the whole, then each object)."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    return stripped, [_json(candidate) for candidate in (stripped, *_OBJECT.findall(stripped))]


def _json(text: str) -> Any:
    try:
        return msgspec.json.decode(text.encode())
    except msgspec.DecodeError:
        return None


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= 200 else text[:200] + "…")

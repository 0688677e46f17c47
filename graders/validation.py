"""What makes a decoded grader usable here, beyond its shape.

Templates, formulas, ranges, labels and python source, and what the running server offers (python graders
enabled, an embedding model for `cosine`).

`check_grader` raises the first problem as a `GraderError` naming its path; with an `item`, it also checks that
every `{{ item.… }}` template can be filled from it (what can be known before any sample exists).
"""

from __future__ import annotations

import ast
import math
from typing import TYPE_CHECKING, Any

from msgspec import UNSET

from tunewright.graders.errors import GraderError
from tunewright.graders.formula import FormulaError, parse_formula
from tunewright.graders.schemas import (
    EvalItem,
    Grader,
    InputAudio,
    InputImage,
    InputText,
    LabelModelGrader,
    MultiGrader,
    OutputText,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    SubGrader,
    TextSimilarityGrader,
    named_graders,
)
from tunewright.graders.templates import missing_from_item, references

if TYPE_CHECKING:
    from collections.abc import Iterator

MAX_SOURCE_BYTES = 256 * 1024
"""Largest python grader source, as OpenAI's limit ("less than 256kB")."""

PYTHON_DISABLED = (
    "Python graders are disabled on this server: they run the grader's code on the server, which its operator "
    "allows with TUNEWRIGHT_PYTHON_GRADERS=true."
)
COSINE_UNAVAILABLE = (
    "the cosine metric compares embeddings, and this server has no embedding model configured; use fuzzy_match, "
    "bleu, gleu, meteor or a rouge metric."
)


def check_grader(
    grader: Grader | SubGrader,
    *,
    param: str = "grader",
    python_enabled: bool,
    cosine_enabled: bool,
    item: Any = UNSET,
) -> None:
    """Refuse a grader this server cannot run as given.

    Args:
        grader: A grader from `parse_grader`.
        param: The grader's path in the request.
        python_enabled: Whether python graders may run.
        cosine_enabled: Whether an embedding model serves the `cosine` metric.
        item: The dataset item to check `{{ item.… }}` templates against (UNSET: not known yet).

    Raises:
        GraderError: the first problem, naming its path.
    """
    if isinstance(grader, MultiGrader):
        _check_multi(grader, param, python_enabled=python_enabled, cosine_enabled=cosine_enabled, item=item)
        return
    if isinstance(grader, PythonGrader):
        _check_python(grader, param, enabled=python_enabled)
    elif isinstance(grader, TextSimilarityGrader) and grader.evaluation_metric == "cosine" and not cosine_enabled:
        where = f"{param}.evaluation_metric"
        raise GraderError(
            f"Unsupported value for '{where}': {COSINE_UNAVAILABLE}", param=where, code="unsupported_value"
        )
    elif isinstance(grader, ScoreModelGrader):
        _check_range(grader, param)
    elif isinstance(grader, LabelModelGrader):
        _check_labels(grader, param)
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        _check_messages(grader.input, f"{param}.input")
        if not grader.model:
            raise GraderError(f"Invalid value for '{param}.model': name a model.", param=f"{param}.model")
    for where, text in templated_fields(grader, param):
        if item is UNSET:
            references(text, param=where)
            continue
        problem = missing_from_item(text, item, param=where)
        if problem is not None:
            raise GraderError(f"Invalid item for the grader: {problem}", param=where)


def templated_fields(grader: SubGrader | Grader, param: str) -> Iterator[tuple[str, str]]:
    """(path, text) of every string of a (non-multi) grader that may hold templates."""
    if isinstance(grader, StringCheckGrader | TextSimilarityGrader):
        yield f"{param}.input", grader.input
        yield f"{param}.reference", grader.reference
    elif isinstance(grader, ScoreModelGrader | LabelModelGrader):
        for index, message in enumerate(grader.input):
            for where, part in content_parts(message, f"{param}.input[{index}].content"):
                if isinstance(part, str):
                    yield where, part
                elif isinstance(part, InputText | OutputText):
                    yield f"{where}.text", part.text


def content_parts(message: EvalItem, param: str) -> Iterator[tuple[str, Any]]:
    """(path, part) of each content part of a message (a single part is its own path)."""
    if isinstance(message.content, list):
        for index, part in enumerate(message.content):
            yield f"{param}[{index}]", part
    else:
        yield param, message.content


def _check_messages(messages: list[EvalItem], param: str) -> None:
    if not messages:
        raise GraderError(f"Invalid value for '{param}': give the model at least one message.", param=param)
    for index, message in enumerate(messages):
        for where, part in content_parts(message, f"{param}[{index}].content"):
            if isinstance(part, InputImage | InputAudio):
                kind = "image" if isinstance(part, InputImage) else "audio"
                raise GraderError(
                    f"Unsupported value for '{where}': the models served here read text only, not {kind}.",
                    param=where,
                    code="unsupported_value",
                )


def _check_range(grader: ScoreModelGrader, param: str) -> None:
    if not isinstance(grader.range, list):
        return
    where = f"{param}.range"
    if len(grader.range) != 2 or not all(math.isfinite(bound) for bound in grader.range):
        raise GraderError(f"Invalid value for '{where}': expected two finite numbers [min, max].", param=where)
    if grader.range[0] >= grader.range[1]:
        raise GraderError(f"Invalid value for '{where}': the minimum must be below the maximum.", param=where)


def _check_labels(grader: LabelModelGrader, param: str) -> None:
    if not grader.labels:
        raise GraderError(f"Invalid value for '{param}.labels': give at least one label.", param=f"{param}.labels")
    if len(set(grader.labels)) != len(grader.labels):
        raise GraderError(f"Invalid value for '{param}.labels': labels must be distinct.", param=f"{param}.labels")
    if not grader.passing_labels:
        raise GraderError(
            f"Invalid value for '{param}.passing_labels': give at least one passing label.",
            param=f"{param}.passing_labels",
        )
    for index, label in enumerate(grader.passing_labels):
        if label not in grader.labels:
            where = f"{param}.passing_labels[{index}]"
            raise GraderError(f"Invalid value for '{where}': {label!r} is not one of the grader's labels.", param=where)


def _check_python(grader: PythonGrader, param: str, *, enabled: bool) -> None:
    if not enabled:
        raise GraderError(PYTHON_DISABLED, param=f"{param}.type", code="unsupported_value")
    where = f"{param}.source"
    if len(grader.source.encode()) > MAX_SOURCE_BYTES:
        raise GraderError(f"Invalid value for '{where}': the source is larger than 256 KiB.", param=where)
    try:
        tree = ast.parse(grader.source, filename="<grader>")
    except (SyntaxError, ValueError) as exc:
        line = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
        reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise GraderError(
            f"Invalid value for '{where}': the source does not parse{line}: {reason}.", param=where
        ) from None
    if not any(_defines_grade(node) for node in tree.body):
        raise GraderError(
            f"Invalid value for '{where}': the source must define a function grade(sample, item) that returns a "
            "number.",
            param=where,
        )


def _defines_grade(node: ast.stmt) -> bool:
    """A top-level statement that binds `grade`: a def, an assignment or an import."""
    if isinstance(node, ast.FunctionDef):
        return node.name == "grade"
    if isinstance(node, ast.Assign):
        return any(isinstance(target, ast.Name) and target.id == "grade" for target in node.targets)
    if isinstance(node, ast.Import | ast.ImportFrom):
        return any((alias.asname or alias.name) == "grade" for alias in node.names)
    return False


def _check_multi(grader: MultiGrader, param: str, *, python_enabled: bool, cosine_enabled: bool, item: Any) -> None:
    graders = grader.graders
    if isinstance(graders, list):
        seen: set[str] = set()
        for index, sub in enumerate(graders):
            if sub.name in seen:
                where = f"{param}.graders[{index}].name"
                raise GraderError(
                    f"Invalid value for '{where}': two graders are named {sub.name!r}; the formula reads them by name.",
                    param=where,
                )
            seen.add(sub.name)
    for name, sub in named_graders(grader).items():
        if isinstance(graders, dict):
            where = f"{param}.graders.{name}"
        elif isinstance(graders, list):
            where = f"{param}.graders[{graders.index(sub)}]"
        else:
            where = f"{param}.graders"
        check_grader(sub, param=where, python_enabled=python_enabled, cosine_enabled=cosine_enabled, item=item)
    where = f"{param}.calculate_output"
    try:
        formula = parse_formula(grader.calculate_output)
    except FormulaError as exc:
        raise GraderError(f"Invalid value for '{where}': {exc.message}", param=where) from None
    names = named_graders(grader)
    for name, position in formula.names.items():
        if name not in names:
            known = ", ".join(sorted(names))
            raise GraderError(
                f"Invalid value for '{where}': {name!r} at position {position} names no grader of this multi grader "
                f"(its graders: {known}).",
                param=where,
            )

"""Grader templates: `{{ item.<path> }}` and `{{ sample.<variable> }}` substituted into grader strings.

As OpenAI's graders guide defines them: any `{{ … }}` in a templated string names a namespace and a variable,
`item` (the dataset line the sample answers) or `sample` (the model's output), and nested values are reached
with a JSON-path-like syntax: `{{ item.reference.answer }}`, `{{ item.choices[0] }}` (or `item.choices.0`),
`{{ sample.output_json.score }}`. The `sample` namespace holds `output_text` (the output as a string),
`output_json` (the output parsed as JSON, when it is valid JSON) and `output_tools` (the tool calls of the
output, as chat completions spell them; empty for a plain string sample).

A value that is not a string is substituted as JSON (`42`, `true`, `{"a": 1}`). A template whose syntax is wrong
or whose namespace is neither `item` nor `sample` makes the grader invalid (`GraderError`); one naming a variable
the item lacks is an error of the item (checked before grading where the item is known); one naming a part of
the sample that is absent is an error of that sample at grading time (`TemplateError`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from tunewright.graders.errors import GraderError

SAMPLE_VARIABLES = ("output_text", "output_json", "output_tools")
"""The variables of the `sample` namespace."""

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_REFERENCE = re.compile(r"^(?P<namespace>[A-Za-z_][A-Za-z0-9_]*)(?P<path>(?:\.[^.\[\]\s{}]+|\[\d+\])*)$")
_PART = re.compile(r"\.([^.\[\]\s{}]+)|\[(\d+)\]")


class Sample(msgspec.Struct, kw_only=True, frozen=True):
    """One model output to grade: the `sample` namespace of templates and what a python grader receives.

    Attributes:
        output_text: The output as a string.
        output_json: The output parsed as JSON (when `is_json`), else None.
        is_json: Whether `output_text` is valid JSON.
        output_tools: The output's tool calls, as chat completions spell them (`[{id, type, function}]`).
        truncated: The output was cut (it reached its token budget); graded as it is, and reported.
    """

    output_text: str
    output_json: Any = None
    is_json: bool = False
    output_tools: list[Any] = msgspec.field(default_factory=list)
    truncated: bool = False

    @classmethod
    def from_text(cls, text: str, *, tools: list[Any] | None = None, truncated: bool = False) -> Sample:
        """The sample of a text output; `output_json` is filled when the text is valid JSON (strict: no NaN)."""
        try:
            value, is_json = msgspec.json.decode(text.encode()), True
        except msgspec.DecodeError:
            value, is_json = None, False
        return cls(
            output_text=text, output_json=value, is_json=is_json, output_tools=list(tools or []), truncated=truncated
        )

    def namespace(self) -> dict[str, Any]:
        """The `sample` namespace as a dict (what a python grader's `grade(sample, item)` receives)."""
        return {"output_text": self.output_text, "output_json": self.output_json, "output_tools": self.output_tools}


@dataclass(frozen=True)
class Reference:
    """One `{{ namespace.path }}` of a template.

    Attributes:
        text: The reference as written, without braces and blanks (`item.answer`).
        namespace: `item` or `sample`.
        path: Keys (str) and indexes (int) below the namespace.
    """

    text: str
    namespace: str
    path: tuple[str | int, ...]


class TemplateError(Exception):
    """A template could not be filled from this sample or item (a grading-time error, not a bad grader).

    Attributes:
        kind: `sample_parse` (the template reads `sample.output_json` of a sample that is not JSON) or
            `invalid_variable` (the variable is absent).
        message: Which reference, and what is missing.
    """

    def __init__(self, kind: Literal["sample_parse", "invalid_variable"], message: str) -> None:
        """Keep the kind and the message."""
        super().__init__(message)
        self.kind = kind
        self.message = message


def references(text: str, *, param: str) -> list[Reference]:
    """The references of a templated string, in order.

    Raises:
        GraderError: a `{{ … }}` that is not `item.<path>` or `sample.<variable>[<path>]`, naming `param`.
    """
    found = []
    for match in _TEMPLATE.finditer(text):
        inner = match.group(1).strip()
        parsed = _REFERENCE.match(inner)
        shown = _shown(inner)
        if parsed is None:
            raise GraderError(
                f"Invalid template '{{{{{shown}}}}}' in '{param}': expected {{{{ item.<field> }}}} or "
                "{{ sample.output_text }} (nested fields as `a.b` or `a[0]`).",
                param=param,
            )
        namespace = parsed.group("namespace")
        path = tuple(int(index) if index else key for key, index in _PART.findall(parsed.group("path")))
        _check_reference(namespace, path, shown, param)
        found.append(Reference(text=inner, namespace=namespace, path=path))
    return found


def _check_reference(namespace: str, path: tuple[str | int, ...], shown: str, param: str) -> None:
    """Refuse a namespace other than `item`/`sample`, a bare namespace and an unknown sample variable."""
    where = f"Invalid template '{{{{{shown}}}}}' in '{param}'"
    if namespace not in ("item", "sample"):
        raise GraderError(f"{where}: the namespace must be `item` or `sample`, not `{namespace}`.", param=param)
    if not path:
        raise GraderError(f"{where}: name a variable of the namespace, such as `{namespace}.<field>`.", param=param)
    if namespace == "sample":
        variable = path[0]
        if variable not in SAMPLE_VARIABLES:
            raise GraderError(
                f"{where}: the sample namespace has {', '.join(SAMPLE_VARIABLES)}, not `{variable}`.", param=param
            )
        if variable == "output_text" and len(path) > 1:
            raise GraderError(f"{where}: `sample.output_text` is a string; it has no fields.", param=param)


def _shown(text: str) -> str:
    """A reference as echoed in a message: at most 100 characters."""
    return text if len(text) <= 100 else text[:100] + "…"


def missing_from_item(text: str, item: Any, *, param: str) -> str | None:
    """A sentence naming the first `item` reference of `text` that `item` cannot fill, or None.

    Raises:
        GraderError: the template itself is invalid.
    """
    for reference in references(text, param=param):
        if reference.namespace == "item":
            problem = _lookup_problem(item, reference)
            if problem is not None:
                return f"'{param}' reads {{{{{_shown(reference.text)}}}}}, but {problem}"
    return None


def render(text: str, *, sample: Sample, item: Any) -> str:
    """`text` with each `{{ … }}` replaced by its value (strings as they are, anything else as JSON).

    Raises:
        TemplateError: a reference the sample or item cannot fill.
    """
    if "{{" not in text:
        return text

    def substitute(match: re.Match[str]) -> str:
        inner = match.group(1).strip()
        parsed = _REFERENCE.match(inner)
        if parsed is None:  # checked when the grader was validated; render it as written
            return match.group(0)
        path = tuple(int(index) if index else key for key, index in _PART.findall(parsed.group("path")))
        return _as_text(resolve(Reference(text=inner, namespace=parsed.group("namespace"), path=path), sample, item))

    return _TEMPLATE.sub(substitute, text)


def resolve(reference: Reference, sample: Sample, item: Any) -> Any:
    """The value a reference names.

    Raises:
        TemplateError: `sample.output_json…` of a sample that is not JSON (`sample_parse`), or an absent
            variable (`invalid_variable`).
    """
    if reference.namespace == "sample":
        if reference.path[:1] == ("output_json",) and not sample.is_json:
            raise TemplateError(
                "sample_parse",
                f"{{{{{_shown(reference.text)}}}}}: the sample is not valid JSON, so it has no output_json.",
            )
        root: Any = sample.namespace()
    else:
        root = item
    problem = _lookup_problem(root, reference)
    if problem is not None:
        raise TemplateError("invalid_variable", f"{{{{{_shown(reference.text)}}}}}: {problem}")
    return _walk(root, reference.path)


def _lookup_problem(root: Any, reference: Reference) -> str | None:
    """Why `reference.path` cannot be followed from `root` (its namespace's value), or None."""
    value = root
    reached = reference.namespace
    for part in reference.path:
        child = _child(value, part)
        if child is _ABSENT:
            if isinstance(value, dict | list):
                return f"{reached} has no `{part}`."
            return f"{reached} is {'null' if value is None else 'a ' + _json_kind(value)}, which has no `{part}`."
        value = child
        reached = f"{reached}[{part}]" if isinstance(part, int) else f"{reached}.{part}"
    return None


_ABSENT = object()


def _child(value: Any, part: str | int) -> Any:
    """`value[part]` for an object key or a list index (a key of digits indexes a list), else `_ABSENT`."""
    if isinstance(value, dict):
        return value.get(str(part), _ABSENT)
    if isinstance(value, list):
        index = part if isinstance(part, int) else int(part) if part.isdecimal() and part.isascii() else None
        if index is not None and 0 <= index < len(value):
            return value[index]
    return _ABSENT


def _walk(root: Any, path: tuple[str | int, ...]) -> Any:
    value = root
    for part in path:
        value = _child(value, part)
    return value


def _json_kind(value: Any) -> str:
    """`string`, `number` or `boolean`: how JSON names a scalar."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else type(value).__name__


def _as_text(value: Any) -> str:
    """A substituted value: a string as it is, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))

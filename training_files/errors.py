"""Errors raised by the trainer, and the problems found in training data.

Pure Python: the API imports this module through ``training_files.validate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterable

DatasetParam = Literal["training_file", "validation_file"]

ECHO_LIMIT = 200
"""Echoed user values are cut at this many characters."""

_CONTROL_ESCAPES = {code: f"\\u{code:04x}" for code in (*range(0x20), 0x7F)}
"""Control characters in a message (echoed values, keys in field paths) written as JSON writes them: the message
is stored as a failed job's error and event, PostgreSQL can store neither NUL nor a JSON `\\u0000`, and a line
break would split it in a log."""


def echo(value: Any) -> str:
    """Render a user-supplied JSON value for an error message, cut at ``ECHO_LIMIT`` characters.

    Args:
        value: A decoded JSON value.

    Returns:
        Strings in single quotes, anything else as compact JSON.
    """
    if isinstance(value, str):
        text, quote = value, "'"
    else:
        text, quote = msgspec.json.encode(value).decode(), ""
    if len(text) > ECHO_LIMIT:
        text = text[:ECHO_LIMIT] + "…"
    return f"{quote}{text}{quote}"


def json_type(value: Any) -> str:
    """Name the JSON type of a decoded value (``object``, ``array``, ``string``, …)."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one line of a dataset.

    Attributes:
        line: 1-based physical line number in the file; ``None`` for the file as a whole.
        path: Field path inside the line (``messages[2].role``), empty for the line as a whole.
        message: What is wrong, phrased to follow the path.
    """

    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = "" if self.line is None else f"line {self.line}: "
        return f"{where}{self.path} {self.message}" if self.path else f"{where}{self.message}"


@dataclass(slots=True)
class Problems:
    """Collects the problems of one example; rule functions append to it."""

    line: int
    items: list[Problem] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        """Record that the field at ``path`` (empty: the whole line) ``message``."""
        self.items.append(Problem(self.line, path, message))


class DatasetError(Exception):
    """A training or validation file that cannot be used; becomes a 400 or a failed job's ``error``.

    Attributes:
        param: The request field that named the file (``training_file`` or ``validation_file``).
        code: ``invalid_training_file`` or ``invalid_validation_file``.
        details: The individual problems, each without the ``param`` prefix (``line 3: …``).
        message: ``param`` followed by the details joined with ``"; "``.
    """

    def __init__(self, details: Iterable[object], *, param: DatasetParam = "training_file") -> None:
        self.param: DatasetParam = param
        self.code = "invalid_validation_file" if param == "validation_file" else "invalid_training_file"
        self.details = tuple(str(detail).translate(_CONTROL_ESCAPES) for detail in details)
        self.message = f"{param} {'; '.join(self.details)}"
        super().__init__(self.message)

    def to_error(self) -> dict[str, str]:
        """Return the job ``error`` object: ``{"code", "message", "param"}``."""
        return {"code": self.code, "message": self.message, "param": self.param}

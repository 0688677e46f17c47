"""Dataset checks that need no tokenizer: JSONL framing while a file streams in, then the format rules.

Pure Python (json via msgspec; no torch, no tokenizer), so the API imports it for the synchronous check on
upload and at job creation; the worker runs the same checks before tokenizing.

Framing rules: UTF-8, one JSON object per line; a UTF-8 byte order mark at the start of the file, CRLF line
ends and blank (whitespace-only) lines are tolerated; line numbers are 1-based physical lines. The first
framing error stops the check. Format rules (``training_files.formats``) collect up to ``MAX_PROBLEMS`` problems.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from tunewright.training_files.chat_format import decode_reason
from tunewright.training_files.errors import DatasetError, DatasetParam, Problem, Problems, json_type
from tunewright.training_files.formats import DataFormat, detect_format, validate_example

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DataFormat",
    "DatasetError",
    "DatasetReport",
    "JsonlChecker",
    "JsonlSummary",
    "Problem",
    "validate_dataset",
    "validate_example",
]

Method = Literal["supervised", "dpo", "reinforcement"]
LineCheck = Callable[[dict[str, Any], Problems], None]

MAX_LINE_BYTES = 64 * 1024 * 1024
MAX_PROBLEMS = 10
MIN_TRAINING_EXAMPLES = 10
ACCEPTED_FORMATS: dict[str, tuple[DataFormat, ...]] = {
    "supervised": (DataFormat.CHAT, DataFormat.PROMPT_COMPLETION),
    "dpo": (DataFormat.PREFERENCE,),
    "reinforcement": (DataFormat.CHAT,),
}
_BOM = b"\xef\xbb\xbf"


class _AnyObject(msgspec.Struct):
    """Any JSON object. Its members are unknown fields to msgspec: checked for syntax and skipped, nothing built."""


# Framing only (upload): a line must be one JSON object; its members are skipped, not built, which is several
# times faster (and cheaper than a dict of msgspec.Raw). The format rules, which need the values, decode them
# fully at job creation.
_FRAMING_LINE = msgspec.json.Decoder(_AnyObject)
# A run of complete lines goes through the same decoder's `decode_lines`: one C call instead of one per line,
# and the same rule for each line, so the verdict never depends on how the bytes were chunked.
NESTED_TOO_DEEPLY = "not valid JSON: nested too deeply"

# Skipping a number checks its syntax, not its value, so the framing decoders accept `1e999`, which the full
# decode refuses ("Number out of range"): a file would pass upload and fail job creation. A number that a
# float cannot hold has an exponent of three digits or more (`1e999`, `-1E+400`), or hundreds of digits (an
# integer past Python's digit limit, a float past 1.8e308 written out), so bytes showing neither shape (digits
# read as 0, `e`, `E` and `+` as e, the rest blank) hold no such number; a line that shows one is decoded in
# full, as the format rules decode it. A shape inside a string ("e123", "+331") only costs that full decode.
_NUMBER_SHAPES = bytes(
    ord("0") if byte in b"0123456789" else ord("e") if byte in b"eE+" else ord(" ") for byte in range(256)
)
_LONG_EXPONENT = b"e000"
_LONG_DIGITS = b"0" * 300


def _may_hold_a_huge_number(data: bytes | bytearray) -> bool:
    """Whether `data` may hold a JSON number too large for a float (see `_NUMBER_SHAPES`)."""
    shapes = data.translate(_NUMBER_SHAPES)
    return _LONG_EXPONENT in shapes or _LONG_DIGITS in shapes


@dataclass(frozen=True, slots=True)
class JsonlSummary:
    """What a successful streaming check saw.

    Attributes:
        lines: Physical lines read, blank ones included.
        examples: Non-blank lines (each a JSON object).
        format: The format of the examples, when the format rules ran.
    """

    lines: int
    examples: int
    format: DataFormat | None = None


@dataclass(frozen=True, slots=True)
class DatasetReport:
    """The outcome of ``validate_dataset``.

    Attributes:
        param: ``training_file`` or ``validation_file``.
        examples: Examples read (up to where the check stopped).
        format: The format of the file (that of its first example), ``None`` when unknown.
        problems: Up to ``MAX_PROBLEMS`` problems, in file order; empty when the file is valid.
    """

    param: DatasetParam
    examples: int
    format: DataFormat | None
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """Whether the file passed every check."""
        return not self.problems

    def raise_if_invalid(self) -> None:
        """Raise the report's problems as one ``DatasetError``.

        Raises:
            DatasetError: When there are problems.
        """
        if self.problems:
            raise DatasetError(self.problems, param=self.param)


def _parse(raw: bytes, text: str, *, framing_only: bool) -> Any:
    """Decode one line (`text`, from `raw`); framing only returns `{}` for any object (values checked, not built)."""
    if framing_only:
        with contextlib.suppress(msgspec.ValidationError):  # valid JSON, not an object: the full decode names it
            _FRAMING_LINE.decode(text)
            if not _may_hold_a_huge_number(raw):
                return {}
    return msgspec.json.decode(text)  # a number out of range raises here, as in the format rules' decode


class _Scan:
    """Line-by-line state shared by the streaming checker and ``validate_dataset``."""

    def __init__(
        self,
        *,
        param: DatasetParam,
        method: Method,
        check_format: bool,
        min_examples: int | None,
        max_problems: int,
        line_check: LineCheck | None = None,
    ) -> None:
        self.param: DatasetParam = param
        self.line_check = line_check
        self.accepted = ACCEPTED_FORMATS[method]
        self.method = method
        self.check_format = check_format
        default_min = MIN_TRAINING_EXAMPLES if param == "training_file" else 1
        self.min_examples = default_min if min_examples is None else min_examples
        self.max_problems = max_problems
        self.lines = self.examples = self.format_line = 0
        self.format: DataFormat | None = None
        self.problems: list[Problem] = []
        self.fatal = False

    @property
    def done(self) -> bool:
        return self.fatal or len(self.problems) >= self.max_problems

    def fail(self, line: int | None, message: str) -> None:
        self.fatal = True
        self.problems.append(Problem(line, "", message))

    def line(self, raw: bytes) -> None:
        """Check the next physical line (without its line end)."""
        self.lines += 1
        if self.lines == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if not raw.strip():
            return
        obj = self._decode(raw)
        if obj is None:
            return
        self.examples += 1
        if self.check_format:
            data_format = detect_format(obj)
            if data_format is not None:
                self._check_file_format(data_format)
            try:
                problems = validate_example(obj, self.lines, method=self.method, extra=self.line_check)
            except RecursionError:  # a value the decoder just managed to nest, too deep to echo or walk again
                self.fail(self.lines, NESTED_TOO_DEEPLY)
                return
            self._extend(problems)

    def _decode(self, raw: bytes) -> dict[str, Any] | None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(self.lines, "not valid UTF-8")
            return None
        try:
            obj = _parse(raw, text, framing_only=not self.check_format)
        except msgspec.DecodeError as exc:
            self.fail(self.lines, f"not valid JSON: {decode_reason(exc)}")
            return None
        except RecursionError:
            self.fail(self.lines, NESTED_TOO_DEEPLY)
            return None
        if not isinstance(obj, dict):
            self.fail(self.lines, f"expected a JSON object, got {json_type(obj)}")
            return None
        return obj

    def _check_file_format(self, data_format: DataFormat) -> None:
        if self.format is None:
            self.format, self.format_line = data_format, self.lines
            if data_format not in self.accepted:
                need = " or ".join(self.accepted)
                message = f"example is in {data_format} format, but {self.method} jobs need {need} examples"
                self._extend([Problem(self.lines, "", message)])
        elif data_format != self.format:
            message = (
                f"example is in {data_format} format, but line {self.format_line} is in {self.format} "
                "format; all lines must use one format"
            )
            self._extend([Problem(self.lines, "", message)])

    def _extend(self, problems: list[Problem]) -> None:
        self.problems.extend(problems[: self.max_problems - len(self.problems)])

    def finish(self) -> None:
        """Add the whole-file problems once every line has been read."""
        if self.fatal:
            return
        if self.examples == 0:
            self.fail(None, "contains no JSON lines")
        elif self.check_format and self.examples < self.min_examples:
            need = f"at least {self.min_examples} {'are' if self.min_examples > 1 else 'is'} required"
            count = f"{self.examples} example{'s' if self.examples > 1 else ''}"
            self._extend([Problem(None, "", f"has {count}; {need}")])

    def error(self) -> DatasetError:
        return DatasetError(self.problems, param=self.param)


class JsonlChecker:
    """Checks a JSONL file while it streams in: feed byte chunks as they arrive, then call ``finish``.

    Only the current partial line is buffered, so memory stays bounded by ``max_line_bytes``. Framing errors
    (UTF-8, JSON, not an object, a line over the size limit) raise at once; with ``check_format`` the format
    rules run on each line too, and their problems raise once ``max_problems`` are collected or at ``finish``.

    Example:
        >>> checker = JsonlChecker(check_format=True)
        >>> for chunk in chunks:
        ...     checker.feed(chunk)
        >>> summary = checker.finish()
    """

    def __init__(
        self,
        *,
        param: DatasetParam = "training_file",
        check_format: bool = False,
        method: Method = "supervised",
        min_examples: int | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_problems: int = MAX_PROBLEMS,
        line_check: LineCheck | None = None,
    ) -> None:
        """Set up a checker.

        Args:
            param: The request field naming the file; it prefixes messages and picks the error code.
            check_format: Also run the training-format rules on every line.
            method: ``supervised`` (chat or prompt/completion lines), ``dpo`` (preference lines) or
                ``reinforcement`` (chat prompts).
            min_examples: Fewest examples allowed when ``check_format``; default 10 for ``training_file``,
                1 for ``validation_file``.
            max_line_bytes: Longest line accepted, in bytes.
            max_problems: Problems collected before giving up.
            line_check: A further check of each line in a known format (a reinforcement job's grader templates).
        """
        self._scan = _Scan(
            param=param,
            method=method,
            check_format=check_format,
            min_examples=min_examples,
            max_problems=max_problems,
            line_check=line_check,
        )
        self._max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._error: DatasetError | None = None

    def feed(self, chunk: bytes | bytearray) -> None:
        """Check the complete lines that ``chunk`` ends, and keep its unfinished last line.

        Raises:
            DatasetError: At the first framing error, or when ``max_problems`` problems are collected.
        """
        self._raise_if_failed()
        if not self._scan.check_format and self._fast_feed(chunk):
            return
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            line = bytes(chunk[start:end])
            if self._buffer:
                self._buffer += line
                line = bytes(self._buffer)
                self._buffer.clear()
            self._line(line)
            start = end + 1
        self._buffer += chunk[start:]
        self._check_length(len(self._buffer))

    def _fast_feed(self, chunk: bytes | bytearray) -> bool:
        """Check the chunk's complete lines at once; False leaves all state as it was for the per-line path."""
        end = chunk.rfind(b"\n")
        if end == -1:
            return False
        # One copy: the kept partial line, then the chunk's complete lines.
        region = self._buffer + memoryview(chunk)[: end + 1]
        if not self._fast_lines(region):
            return False
        self._buffer = bytearray(chunk[end + 1 :])
        self._check_length(len(self._buffer))
        return True

    def _fast_lines(self, region: bytearray) -> bool:
        """Validate complete lines (each a JSON object) in one decode; any doubt goes to the per-line path.

        A JSON string cannot hold a raw newline, so no value spans two lines: `decode_lines` finds one object
        per line exactly when every line is one object (it skips blank lines and reads two objects on a line
        as two, so a count that differs from the lines' says which). Any error or doubt makes it return False,
        and the per-line path then finds the line and words the message.
        """
        if self._scan.lines == 0 and region.startswith(_BOM):
            region = region[len(_BOM) :]
        if len(region) > self._max_line_bytes:
            return False
        lines = region.count(b"\n")
        try:
            if not region.isascii():  # ASCII is valid UTF-8; msgspec skips string contents, so check here
                region.decode("utf-8")
            objects = _FRAMING_LINE.decode_lines(region)
        except (UnicodeDecodeError, msgspec.DecodeError, RecursionError):
            return False
        if len(objects) != lines or _may_hold_a_huge_number(region):
            return False
        self._scan.lines += lines
        self._scan.examples += lines
        return True

    def finish(self) -> JsonlSummary:
        """Check the last line (when the file does not end with a newline) and the file as a whole.

        Returns:
            Line and example counts, and the format when the format rules ran.

        Raises:
            DatasetError: When the file is empty, or has any problem.
        """
        self._raise_if_failed()
        if self._buffer:
            line = bytes(self._buffer)
            self._buffer.clear()
            self._line(line)
        scan = self._scan
        scan.finish()
        if scan.problems:
            self._error = scan.error()
            raise self._error
        return JsonlSummary(lines=scan.lines, examples=scan.examples, format=scan.format)

    def _line(self, line: bytes) -> None:
        self._check_length(len(line))
        self._scan.line(line.removesuffix(b"\r"))
        if self._scan.done:
            self._error = self._scan.error()
            raise self._error

    def _check_length(self, size: int) -> None:
        if size > self._max_line_bytes:
            self._scan.fail(self._scan.lines + 1, f"longer than {self._max_line_bytes} bytes")
            self._error = self._scan.error()
            raise self._error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


def validate_dataset(
    lines: Iterable[bytes | str],
    *,
    param: DatasetParam = "training_file",
    method: Method = "supervised",
    min_examples: int | None = None,
    max_problems: int = MAX_PROBLEMS,
    line_check: LineCheck | None = None,
) -> DatasetReport:
    """Check a whole dataset, one physical line per item (iterating a file opened in either mode works).

    Args:
        lines: The file's lines, each with or without its line end; ``str`` lines are encoded as UTF-8
            (surrogate escapes become the bytes they stand for, and are reported as not valid UTF-8).
        param: ``training_file`` or ``validation_file``; it prefixes messages and picks the error code.
        method: ``supervised`` (chat or prompt/completion lines), ``dpo`` (preference lines) or
            ``reinforcement`` (chat prompts).
        min_examples: Fewest examples allowed; default 10 for ``training_file``, 1 for ``validation_file``.
        max_problems: Problems collected before the check stops.
        line_check: A further check of each line in a known format (a reinforcement job's grader templates).

    Returns:
        The report: example count, detected format and up to ``max_problems`` problems.
    """
    scan = _Scan(
        param=param,
        method=method,
        check_format=True,
        min_examples=min_examples,
        max_problems=max_problems,
        line_check=line_check,
    )
    for item in lines:
        raw = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
        scan.line(raw.removesuffix(b"\n").removesuffix(b"\r"))
        if scan.done:
            break
    else:
        scan.finish()
    return DatasetReport(param=param, examples=scan.examples, format=scan.format, problems=tuple(scan.problems))

"""The `calculate_output` formula of a multi grader: a small arithmetic language, parsed and evaluated here.

What OpenAI's graders guide allows: numbers, the names of the sub-graders (each stands for its reward), the
operators `+ - * /` and `^` (also spelled `**`; right-associative, above unary minus: `-2^2` is -4), parentheses,
and the functions `min`, `max` (one or more arguments), `abs`, `floor`, `ceil`, `exp`, `sqrt` and `log` (natural
logarithm; `log(x, base)` too). Nothing is handed to Python's `eval`: the text is tokenized and parsed by recursive
descent into a tree of the nodes below, which only this module evaluates, so a formula can name nothing but
sub-graders and those functions (`__import__("os")` is an unknown function at its position).

Errors name the 1-based character position: `FormulaError.position`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

MAX_LENGTH = 4096
"""Longest formula accepted, in characters."""
MAX_DEPTH = 64
"""Deepest nesting of parentheses, calls and unary signs."""

_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|[-+*/^(),]))"
)


class FormulaError(ValueError):
    """A formula that cannot be parsed or evaluated.

    Attributes:
        message: What is wrong, with its position.
        position: 1-based character position (0 when the error concerns the whole formula).
    """

    def __init__(self, message: str, position: int) -> None:
        """Keep the message and the position."""
        super().__init__(message)
        self.message = message
        self.position = position


def _log(x: float, base: float = math.e) -> float:
    return math.log(x, base)


def _min(*args: float) -> float:
    return min(args)


def _max(*args: float) -> float:
    return max(args)


# name: (least arguments, most arguments or None for any, function)
FUNCTIONS: dict[str, tuple[int, int | None, Callable[..., float]]] = {
    "min": (1, None, _min),
    "max": (1, None, _max),
    "abs": (1, 1, abs),
    "floor": (1, 1, math.floor),
    "ceil": (1, 1, math.ceil),
    "exp": (1, 1, math.exp),
    "sqrt": (1, 1, math.sqrt),
    "log": (1, 2, _log),
}


@dataclass(frozen=True)
class Number:
    """A number literal."""

    value: float


@dataclass(frozen=True)
class Name:
    """A sub-grader's reward, by its name."""

    name: str
    position: int


@dataclass(frozen=True)
class Unary:
    """`-x` or `+x`."""

    op: str
    operand: Node


@dataclass(frozen=True)
class Binary:
    """`a op b` for op in `+ - * / ^`."""

    op: str
    left: Node
    right: Node
    position: int


@dataclass(frozen=True)
class Call:
    """`f(a, …)` for one of `FUNCTIONS`."""

    function: str
    args: tuple[Node, ...]
    position: int


Node = Number | Name | Unary | Binary | Call


@dataclass(frozen=True)
class Token:
    """A token and its 1-based position; `kind` is `number`, `name`, `op` or `end`."""

    kind: str
    text: str
    position: int


@dataclass(frozen=True)
class Formula:
    """A parsed formula: its tree and the names it reads (each with the position of its first use)."""

    text: str
    tree: Node
    names: dict[str, int]

    def evaluate(self, values: Mapping[str, float]) -> float:
        """The formula's value with each name standing for `values[name]`.

        Raises:
            FormulaError: a name without a value, a division by zero, a value outside a function's domain
                (`sqrt(-1)`, `log(0)`), or a result too large for a float.
        """
        result = _evaluate(self.tree, values)
        if not math.isfinite(result):
            raise FormulaError(f"The formula's value is not a finite number ({result}).", 0)
        return result


def tokenize(text: str) -> list[Token]:
    """The tokens of `text`, ending with an `end` token.

    Raises:
        FormulaError: a character that starts no token.
    """
    tokens: list[Token] = []
    index = 0
    while index < len(text):
        match = _TOKEN.match(text, index)
        if match is None or match.end() == index:
            if text[index:].strip() == "":
                break
            position = index + len(text[index:]) - len(text[index:].lstrip()) + 1
            raise FormulaError(f"Unexpected character {text[position - 1]!r} at position {position}.", position)
        kind = match.lastgroup or "op"
        tokens.append(Token(kind, match.group(kind), match.start(kind) + 1))
        index = match.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


def parse_formula(text: str) -> Formula:
    """Parse a formula.

    Raises:
        FormulaError: empty, too long, too deeply nested, a syntax error, or an unknown function or a call with
            the wrong number of arguments, with its position.
    """
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"The formula is longer than {MAX_LENGTH} characters.", 0)
    parser = _Parser(tokenize(text))
    if parser.peek().kind == "end":
        raise FormulaError("The formula is empty.", 0)
    tree = parser.expression()
    end = parser.peek()
    if end.kind != "end":
        raise FormulaError(f"Unexpected {end.text!r} at position {end.position}.", end.position)
    names: dict[str, int] = {}
    for name in _names(tree):
        names.setdefault(name.name, name.position)
    return Formula(text=text, tree=tree, names=names)


class _Parser:
    """Recursive descent over the tokens: expression → term → unary → power → atom."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.index]

    def take(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expect(self, text: str) -> Token:
        token = self.take()
        if token.text != text or token.kind != "op":
            raise FormulaError(
                f"Expected {text!r} at position {token.position}, found {_describe(token)}.", token.position
            )
        return token

    def expression(self) -> Node:
        node = self.term()
        while self.peek().kind == "op" and self.peek().text in "+-":
            op = self.take()
            node = Binary(op.text, node, self.term(), op.position)
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek().kind == "op" and self.peek().text in ("*", "/"):
            op = self.take()
            node = Binary(op.text, node, self.unary(), op.position)
        return node

    def unary(self) -> Node:
        token = self.peek()
        if token.kind == "op" and token.text in "+-":
            self.take()
            with self._nested(token):
                return Unary(token.text, self.unary())
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        token = self.peek()
        if token.kind == "op" and token.text in ("^", "**"):
            self.take()
            with self._nested(token):
                return Binary("^", base, self.unary(), token.position)
        return base

    def atom(self) -> Node:
        token = self.take()
        if token.kind == "number":
            return Number(float(token.text))
        if token.kind == "name":
            if self.peek().kind == "op" and self.peek().text == "(":
                return self.call(token)
            if token.text in FUNCTIONS:
                raise FormulaError(
                    f"{token.text} at position {token.position} is a function: call it as {token.text}(…).",
                    token.position,
                )
            return Name(token.text, token.position)
        if token.kind == "op" and token.text == "(":
            with self._nested(token):
                node = self.expression()
            self.expect(")")
            return node
        raise FormulaError(
            f"Expected a number, a name or '(' at position {token.position}, found {_describe(token)}.", token.position
        )

    def call(self, name: Token) -> Node:
        if name.text not in FUNCTIONS:
            known = ", ".join(FUNCTIONS)
            raise FormulaError(
                f"Unknown function {name.text!r} at position {name.position}; the functions are {known}.",
                name.position,
            )
        self.expect("(")
        args: list[Node] = []
        with self._nested(name):
            if not (self.peek().kind == "op" and self.peek().text == ")"):
                args.append(self.expression())
                while self.peek().kind == "op" and self.peek().text == ",":
                    self.take()
                    args.append(self.expression())
        self.expect(")")
        least, most, _ = FUNCTIONS[name.text]
        if len(args) < least or (most is not None and len(args) > most):
            wanted = f"{least}" if least == most else f"{least} to {most}" if most else f"at least {least}"
            raise FormulaError(
                f"{name.text}() at position {name.position} takes {wanted} argument{'s' if wanted != '1' else ''}, "
                f"got {len(args)}.",
                name.position,
            )
        return Call(name.text, tuple(args), name.position)

    def _nested(self, token: Token) -> _Depth:
        return _Depth(self, token)


class _Depth:
    """Counts nesting around a recursive step; too deep is an error at the token that opened it."""

    def __init__(self, parser: _Parser, token: Token) -> None:
        self.parser = parser
        self.token = token

    def __enter__(self) -> None:
        self.parser.depth += 1
        if self.parser.depth > MAX_DEPTH:
            raise FormulaError(
                f"The formula nests deeper than {MAX_DEPTH} levels at position {self.token.position}.",
                self.token.position,
            )

    def __exit__(self, *exc: object) -> None:
        self.parser.depth -= 1


def _describe(token: Token) -> str:
    return "the end of the formula" if token.kind == "end" else repr(token.text)


def _names(node: Node) -> list[Name]:
    if isinstance(node, Name):
        return [node]
    if isinstance(node, Unary):
        return _names(node.operand)
    if isinstance(node, Binary):
        return [*_names(node.left), *_names(node.right)]
    if isinstance(node, Call):
        return [name for arg in node.args for name in _names(arg)]
    return []


def _evaluate(node: Node, values: Mapping[str, float]) -> float:
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Name):
        if node.name not in values:
            raise FormulaError(f"{node.name!r} at position {node.position} names no sub-grader.", node.position)
        return float(values[node.name])
    if isinstance(node, Unary):
        operand = _evaluate(node.operand, values)
        return -operand if node.op == "-" else operand
    if isinstance(node, Binary):
        return _binary(node, _evaluate(node.left, values), _evaluate(node.right, values))
    return _call(node, [_evaluate(arg, values) for arg in node.args])


def _binary(node: Binary, left: float, right: float) -> float:
    try:
        if node.op == "+":
            return left + right
        if node.op == "-":
            return left - right
        if node.op == "*":
            return left * right
        if node.op == "/":
            return left / right
        return math.pow(left, right)
    except ZeroDivisionError:
        raise FormulaError(f"Division by zero at position {node.position}.", node.position) from None
    except (ValueError, OverflowError) as exc:
        raise FormulaError(
            f"Cannot compute {left} {node.op} {right} at position {node.position}: {exc}.", node.position
        ) from None


def _call(node: Call, args: list[float]) -> float:
    try:
        return float(FUNCTIONS[node.function][2](*args))
    except (ValueError, OverflowError, ZeroDivisionError) as exc:
        shown = ", ".join(f"{arg:g}" for arg in args)
        raise FormulaError(
            f"Cannot compute {node.function}({shown}) at position {node.position}: {exc}.", node.position
        ) from None

"""The multi grader's `calculate_output` language: precedence, functions, positions of errors, and no eval."""

from __future__ import annotations

import math

import pytest

from tunewright.graders.formula import MAX_DEPTH, FormulaError, parse_formula


def value(text: str, **names: float) -> float:
    return parse_formula(text).evaluate(names)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),  # left-associative
        ("12 / 3 / 2", 2),
        ("2 ^ 3 ^ 2", 512),  # right-associative
        ("2 ** 3", 8),
        ("-2 ^ 2", -4),  # the power binds tighter than unary minus
        ("2 ^ -1", 0.5),
        ("--3", 3),
        ("+3 - -2", 5),
        ("1.5e1 + .5", 15.5),
        ("min(3, 1, 2) + max(4, 7)", 8),
        ("abs(-2.5) + floor(2.7) + ceil(2.1)", 7.5),
        ("exp(0) + sqrt(16) + log(1)", 5),
        ("log(8, 2)", 3),
        ("max(1)", 1),
    ],
)
def test_arithmetic_follows_the_usual_precedence(text, expected):
    assert value(text) == pytest.approx(expected)


def test_names_stand_for_the_sub_graders_rewards():
    formula = parse_formula("0.5 * name_match + 0.5 * similarity ^ 2")
    assert formula.names == {"name_match": 7, "similarity": 26}
    assert formula.evaluate({"name_match": 1.0, "similarity": 0.5}) == pytest.approx(0.625)


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("1 +", 4, "end of the formula"),
        ("(1 + 2", 7, "Expected ')'"),
        ("1 + * 2", 5, "'*'"),
        ("1 2", 3, "Unexpected '2'"),
        ("a $ b", 3, "Unexpected character '$'"),
        ("os.system", 3, "Unexpected character '.'"),
        ("__import__('os')", 12, "Unexpected character"),
        ("__import__(1)", 1, "Unknown function '__import__'"),
        ("eval(1)", 1, "Unknown function 'eval'"),
        ("open(1)", 1, "Unknown function"),
        ("sqrt(1, 2)", 1, "takes 1 argument"),
        ("min()", 1, "at least 1"),
        ("log(1, 2, 3)", 1, "1 to 2"),
        ("2 + sqrt", 5, "is a function"),
        ("[1]", 1, "Unexpected character '['"),
        ("lambda: 1", 7, "Unexpected character ':'"),
    ],
)
def test_errors_name_the_position(text, position, words):
    with pytest.raises(FormulaError) as caught:
        parse_formula(text)
    assert caught.value.position == position
    assert words in caught.value.message
    assert f"position {position}" in caught.value.message


def test_python_is_never_evaluated():
    # Every name is a sub-grader's reward or one of the eight functions; nothing reaches Python's namespace.
    formula = parse_formula("__builtins__ + __class__")
    with pytest.raises(FormulaError, match="names no sub-grader"):
        formula.evaluate({})
    assert formula.evaluate({"__builtins__": 1, "__class__": 2}) == 3


def test_empty_long_and_deep_formulas_are_refused():
    with pytest.raises(FormulaError, match="empty"):
        parse_formula("   ")
    with pytest.raises(FormulaError, match="longer than"):
        parse_formula("1+" * 3000 + "1")
    with pytest.raises(FormulaError, match="nests deeper"):
        parse_formula("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1))
    assert parse_formula("(" * 10 + "1" + ")" * 10).evaluate({}) == 1


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("1 / a", "Division by zero at position 3"),
        ("sqrt(a - 1)", "sqrt(-1) at position 1"),
        ("log(a)", "log(0)"),
        ("exp(1000)", "exp(1000)"),
        ("10 ^ 400", "position 4"),
        ("(0 - 8) ^ 0.5", "position 9"),
    ],
)
def test_evaluation_errors_name_the_position(text, words):
    with pytest.raises(FormulaError) as caught:
        value(text, a=0.0)
    assert words in caught.value.message


def test_results_are_floats():
    assert isinstance(value("floor(2.5)"), float)
    assert math.isclose(value("a * 2", a=0.25), 0.5)

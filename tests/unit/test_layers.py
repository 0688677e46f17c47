"""Imports point one way (STYLE.md §1), and heavy ML libraries stay out of the API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
LAYERS = ("api", "trainer", "storage", "inference", "clients")
HEAVY = ("torch", "transformers", "peft", "unsloth", "unsloth_zoo", "accelerate", "trl")
# Pure-Python modules of trainer/ that the API may import for the synchronous dataset check.
TRAINER_FOR_API = ("validate", "errors", "formats", "chat_format")

ALLOWED = {
    "storage": {"storage"},
    "trainer": {"trainer", "storage"},
    "inference": {"inference", "trainer", "storage"},
    "api": {"api", "storage", "trainer", "inference"},
    "clients": set(LAYERS),
}


def modules():
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            yield layer, path


def imports(tree):
    """(module name, imported lazily) for every import: inside a function or under TYPE_CHECKING."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            type_only = isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING"
            inside = in_function or type_only or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, inside) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, inside))
            visit(child, inside)

    visit(tree, False)
    return found


@pytest.mark.parametrize(("layer", "path"), list(modules()), ids=lambda v: str(v).split("/main/")[-1])
def test_imports_point_one_way(layer, path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for name, in_function in imports(tree):
        parts = name.split(".")
        assert parts[0] not in LAYERS, f"{path}: bare import {name!r}; use tunewright.{name}"
        if parts[0] == "tunewright" and len(parts) > 1:
            target = parts[1]
            assert target in ALLOWED[layer], f"{path}: {layer} may not import {name}"
            if layer == "api" and target == "trainer":
                assert len(parts) > 2 and parts[2] in TRAINER_FOR_API, (
                    f"{path}: api may only import pure trainer modules"
                )
        if parts[0] in HEAVY:
            assert layer in ("trainer", "inference"), f"{path}: {name} imported outside trainer/ and inference/"
            assert in_function, f"{path}: {name} must be imported inside a function"


def test_the_layer_test_sees_every_layer():
    seen = {layer for layer, _ in modules()}
    assert seen == set(LAYERS)

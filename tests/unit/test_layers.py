"""Imports point one way (docs/architecture.md "Layers"), and heavy ML libraries stay out of the API.

```
clients ─▶ api ─▶ inference ─▶ modeling ─▶ storage
            │                     ▲   │
            ├──▶ training_files ◀─┼───┘
            │         ▲           │
            │      trainer ───────┘ (and storage)
```

`graders` (OpenAI's graders: decoding, checks, grading, the python sandbox) imports nothing else of ours;
`training_files` (the OpenAI training-file formats and their checks) only `graders` (a reinforcement file's lines
are checked against the job's grader); `modeling` (base models: registry, loading,
chat rendering, the tiny model, the training plan) imports only `training_files` and `storage`;
`trainer` and `inference` are siblings over `modeling` and never import each other; `api` imports no `trainer`;
`api` and `trainer` may import `graders`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
LAYERS = ("api", "trainer", "storage", "inference", "clients", "modeling", "training_files", "graders")
HEAVY = ("torch", "transformers", "peft", "unsloth", "unsloth_zoo", "accelerate", "trl", "jinja2", "tokenizers")
# Packages that may import the heavy libraries, and only inside functions.
HEAVY_ALLOWED = ("trainer", "inference", "modeling")

ALLOWED = {
    "storage": {"storage"},
    "training_files": {"training_files", "graders"},
    "graders": {"graders"},
    "modeling": {"modeling", "training_files", "storage"},
    "trainer": {"trainer", "modeling", "training_files", "graders", "storage"},
    "inference": {"inference", "modeling", "storage"},
    "api": {"api", "inference", "modeling", "training_files", "graders", "storage"},
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
            assert parts[1] in ALLOWED[layer], f"{path}: {layer} may not import {name}"
        if parts[0] in HEAVY:
            assert layer in HEAVY_ALLOWED, f"{path}: {name} imported outside {', '.join(HEAVY_ALLOWED)}"
            assert in_function, f"{path}: {name} must be imported inside a function"


def test_the_layer_test_sees_every_layer():
    seen = {layer for layer, _ in modules()}
    assert seen == set(LAYERS)


def test_the_api_process_imports_no_heavy_library():
    """Importing the whole API (every route module) loads neither torch nor transformers nor the trainer."""
    import subprocess
    import sys

    code = (
        "import sys; from tunewright.api.app import _routes, DEFAULT_FEATURES; _routes(DEFAULT_FEATURES); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft') "
        "or m.startswith('tunewright.trainer')); print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

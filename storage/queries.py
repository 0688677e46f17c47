"""Named SQL queries and migration scripts, read once from `storage/sql/` (package data).

`storage/sql/queries.sql` holds the shared queries as blocks that start with a `-- name: <name>` line;
`storage/sql/<dialect>/queries.sql` overrides a query where the dialects differ. Migrations are
`storage/sql/<dialect>/NNNN_<what>.sql`, applied in name order.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$")
_MIGRATION_NAME = re.compile(r"^\d{4}_\w+\.sql$")
_NAMED_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def parse_queries(text: str) -> dict[str, str]:
    """Split a queries file into `{name: sql}`.

    Other `--` comment lines are dropped: they could hold `:words` that read as parameters.
    """
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in [*text.splitlines(), "-- name: __end__"]:
        match = _NAME_LINE.match(line.strip())
        if match:
            if name is not None:
                queries[name] = "\n".join(lines).strip().rstrip(";").strip()
            name, lines = match.group(1), []
        elif name is not None and not line.strip().startswith("--"):
            lines.append(line)
    return queries


def _sql_dir() -> Traversable:
    return resources.files("tunewright.storage") / "sql"


@functools.cache
def load_queries(dialect: str) -> dict[str, str]:
    """Return the shared named queries overlaid with the dialect's overrides."""
    root = _sql_dir()
    queries = parse_queries((root / "queries.sql").read_text(encoding="utf-8"))
    override = root / dialect / "queries.sql"
    if override.is_file():
        queries.update(parse_queries(override.read_text(encoding="utf-8")))
    return queries


@functools.cache
def load_migrations(dialect: str) -> tuple[tuple[str, str], ...]:
    """Return `(name, script)` of each `storage/sql/<dialect>/NNNN_<what>.sql`, in order (name without .sql)."""
    folder = _sql_dir() / dialect
    files = sorted(f.name for f in folder.iterdir() if _MIGRATION_NAME.match(f.name))
    return tuple((name.removesuffix(".sql"), (folder / name).read_text(encoding="utf-8")) for name in files)


def split_script(script: str) -> list[str]:
    """Split SQL text into complete statements (our files have no `;` inside literals or `$$` bodies)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """Rewrite `:name` placeholders as psycopg's `%(name)s`, escaping literal `%` (`::type` casts stay)."""
    return _NAMED_PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))

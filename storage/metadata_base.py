"""What the metadata store's feature mixins share: the database, pages, partial updates, migrations."""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from tunewright.storage.errors import InvalidCursor
from tunewright.storage.records import Page
from tunewright.storage.rows import encode_columns, from_row, from_tuples

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from tunewright.storage.db import Connection, Database

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=msgspec.Struct)

# Sentinel cursors for a first page: every real (created_at, id) sorts between them.
_FIRST_DESC = (2**62, "")
_FIRST_ASC = (-1, "")


def now() -> int:
    """Return the current time in unix seconds."""
    return int(time.time())


class SQLStoreBase:
    """The database a store works on, and the helpers its mixins share."""

    def __init__(self, database: Database) -> None:
        """Work on `database` (not migrated here: call `migrate()` where the schema is owned)."""
        self.database = database
        self._created_at: int | None = None

    @property
    def reads_wait_on_network(self) -> bool:
        """See `MetadataStore.reads_wait_on_network`."""
        return self.database.reads_wait_on_network

    def ping(self) -> None:
        """Raise `Unavailable` if the database does not answer."""
        self.database.ping()

    def database_created_at(self) -> int:
        """See `MetadataStore.database_created_at` (read once, then remembered: it never changes)."""
        if self._created_at is None:
            with self.database.reading() as conn:
                self._created_at = int(conn.run("database_created_at").fetchone()["created_at"])
        return self._created_at

    def close(self) -> None:
        """Close the database's connections."""
        self.database.close()

    def migrate(self) -> list[str]:
        """Apply pending migrations, one transaction each; return the names applied.

        Safe to run from several processes at once: each transaction takes the migration lock first
        (PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE) and re-reads what is applied.
        """
        applied: list[str] = []
        for name, script in self.database.migrations():
            with self.database.transaction(immediate=True) as conn:
                conn.run("lock_migrations")
                conn.run("create_schema_migrations")
                done = {row["name"] for row in conn.run("applied_migrations").fetchall()}
                if name in done:
                    continue
                conn.executescript(script)
                conn.run("record_migration", {"name": name, "applied_at": now()})
            logger.info("applied migration %s", name)
            applied.append(name)
        return applied

    def _list_sql(self, name: str, order: str, cls: type[msgspec.Struct], where: str = "") -> str:
        """Return the list query `name` with its `{cmp}`/`{dir}` tokens filled for `order`, `{columns}` for `cls`.

        `where` (`AND …` clauses with their own placeholders) replaces a `{filters}` token.
        """
        return _ordered_sql(self.database.query(name).replace("{filters}", where), order, cls)

    def _page(
        self,
        conn: Connection,
        cls: type[R],
        *,
        query: str,
        cursor_query: str,
        scope: Mapping[str, Any],
        after: str | None,
        limit: int,
        order: str,
        filters: Mapping[str, Any] | None = None,
        where: str = "",
    ) -> Page[R]:
        """Fetch one page of a list ordered by `(created_at, id)`.

        `scope` holds the parameters that name the list (project, job, …): the cursor query must find
        `after` within it, else `InvalidCursor`. `filters` are the parameters of the query's filters, and of
        `where`'s clauses (see `_list_sql`). Fetches `limit + 1` rows to learn `has_more`.
        """
        if after is None:
            bound = _FIRST_DESC if order == "desc" else _FIRST_ASC
        else:
            row = conn.run(cursor_query, {**scope, "id": after}).fetchone()
            if row is None:
                raise InvalidCursor(after)
            bound = (row["created_at"], row["id"])
        params = {
            **scope,
            **(filters or {}),
            "after_created_at": bound[0],
            "after_id": bound[1],
            "limit": limit + 1,
        }
        names, rows = conn.fetch_tuples(self._list_sql(query, order, cls, where), params)
        return Page(items=from_tuples(cls, names, rows[:limit]), has_more=len(rows) > limit)

    def _update(
        self,
        conn: Connection,
        cls: type[R],
        *,
        sql: str,
        where: Mapping[str, Any],
        changes: Mapping[str, Any],
        columns: Collection[str],
    ) -> R | None:
        """Run `UPDATE … SET {set} WHERE … RETURNING *` with `changes` (at least one); None if no row matched.

        Raises:
            ValueError: a change names a column outside `columns`.
        """
        unknown = set(changes) - set(columns)
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
        values = encode_columns(cls, changes)
        assignments = ", ".join(f"{column} = :set_{column}" for column in values)
        sql = sql.replace("{set}", assignments)
        params = {**where, **{f"set_{column}": value for column, value in values.items()}}
        row = conn.execute(sql, params).fetchone()
        return None if row is None else from_row(cls, row)


@functools.lru_cache(maxsize=256)
def _ordered_sql(sql: str, order: str, cls: type[msgspec.Struct]) -> str:
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
    cmp, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
    columns = ", ".join(cls.__struct_fields__)
    return sql.replace("{cmp}", cmp).replace("{dir}", direction).replace("{columns}", columns)

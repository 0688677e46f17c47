"""Migrations: idempotent, safe to run concurrently, and the same tables and columns on both dialects."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest

from tunewright.storage.db import Database, PostgresDatabase, SQLiteDatabase
from tunewright.storage.metadata import SQLMetadataStore
from tunewright.storage.queries import load_migrations

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

ALL = [name for name, _ in load_migrations("sqlite")]


def _wipe_postgres(url: str) -> None:
    """Empty a migrated clone, so migrations start from nothing."""
    database = PostgresDatabase(url, pool_size=1)
    try:
        with database.transaction() as conn:
            conn.executescript("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        database.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_empty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Database]]:
    """Open a new handle (as another process would) on one empty database of each dialect."""
    handles: list[Database] = []
    if request.param == "sqlite":
        path = tmp_path / "empty.db"

        def make() -> Database:
            handles.append(SQLiteDatabase(path))
            return handles[-1]

    else:
        url = request.getfixturevalue("postgres_url")
        _wipe_postgres(url)

        def make() -> Database:
            handles.append(PostgresDatabase(url, pool_size=2))
            return handles[-1]

    yield make
    for handle in handles:
        handle.close()


def test_migrate_applies_everything_once(open_empty: Callable[[], Database]) -> None:
    store = SQLMetadataStore(open_empty())
    assert ALL[:4] == ["0001_initial", "0002_blob_intents", "0003_usage", "0004_upload_reservations"]
    assert "0005_metering" in ALL
    assert "0006_webhooks" in ALL
    assert "0007_rate_limits" in ALL
    assert sorted(ALL) == ALL
    assert store.migrate() == ALL
    assert store.migrate() == []
    assert SQLMetadataStore(open_empty()).migrate() == []


def test_a_migration_numbered_below_an_applied_one_is_still_applied(
    open_empty: Callable[[], Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Branches land migrations out of order (0006 before 0005): the runner applies what is missing, by name."""
    database = open_empty()
    store = SQLMetadataStore(database)
    later = (*load_migrations(database.dialect), ("9999_later", "CREATE TABLE later_table (id TEXT PRIMARY KEY);"))
    monkeypatch.setattr(database, "migrations", lambda: later)
    assert store.migrate()[-1] == "9999_later"
    gap = ("9998_gap_filled", "CREATE TABLE gap_table (id TEXT PRIMARY KEY);")
    monkeypatch.setattr(database, "migrations", lambda: (*later[:-1], gap, later[-1]))
    assert store.migrate() == ["9998_gap_filled"]
    with database.transaction() as conn:
        conn.execute("INSERT INTO gap_table (id) VALUES ('x')")


def test_concurrent_migrations_apply_each_once(open_empty: Callable[[], Database]) -> None:
    stores = [SQLMetadataStore(open_empty()) for _ in range(4)]
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def run(store: SQLMetadataStore) -> None:
        barrier.wait()
        try:
            results.append(store.migrate())
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(name for applied in results for name in applied) == ALL
    with stores[0].database.transaction() as conn:
        applied = [row["name"] for row in conn.run("applied_migrations").fetchall()]
    assert applied == ALL


def _sqlite_columns(database: Database) -> dict[str, list[str]]:
    with database.transaction() as conn:
        tables = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        return {
            t["name"]: sorted(c["name"] for c in conn.execute(f"PRAGMA table_info({t['name']})").fetchall())
            for t in tables
        }


def _postgres_columns(database: Database) -> dict[str, list[str]]:
    with database.transaction() as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        ).fetchall()
    columns: dict[str, list[str]] = {}
    for row in rows:
        columns.setdefault(row["table_name"], []).append(row["column_name"])
    return {table: sorted(names) for table, names in sorted(columns.items())}


@pytest.mark.postgres
def test_both_dialects_have_the_same_tables_and_columns(postgres_url: str, tmp_path: Path) -> None:
    _wipe_postgres(postgres_url)
    postgres = PostgresDatabase(postgres_url, pool_size=1)
    sqlite = SQLiteDatabase(tmp_path / "schema.db")
    try:
        SQLMetadataStore(postgres).migrate()
        SQLMetadataStore(sqlite).migrate()
        sqlite_columns = _sqlite_columns(sqlite)
        assert _postgres_columns(postgres) == sqlite_columns
    finally:
        postgres.close()
        sqlite.close()
    assert {"jobs", "queue_turns", "schema_migrations", "permissions"} <= set(sqlite_columns)


@pytest.mark.postgres
def test_the_session_template_matches_fresh_migrations(postgres_url: str, tmp_path: Path) -> None:
    cloned = PostgresDatabase(postgres_url, pool_size=1)
    sqlite = SQLiteDatabase(tmp_path / "schema.db")
    try:
        SQLMetadataStore(sqlite).migrate()
        assert _postgres_columns(cloned) == _sqlite_columns(sqlite)
    finally:
        cloned.close()
        sqlite.close()

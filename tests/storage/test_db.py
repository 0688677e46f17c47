"""The Database connector over both dialects: transactions, errors, notifications, named queries."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import pytest

from tunewright.storage.db import JOBS_CHANNEL, Database, PostgresDatabase, SQLiteDatabase, open_database
from tunewright.storage.errors import Conflict, NotFound, Unavailable, UnstorableText
from tunewright.storage.metadata import SQLMetadataStore
from tunewright.storage.queries import load_migrations, load_queries, parse_queries, split_script, to_pyformat

if TYPE_CHECKING:
    from pathlib import Path


def _insert_org(database: Database, org_id: str, slug: str) -> None:
    with database.transaction(immediate=True) as conn:
        conn.run("insert_organization", {"id": org_id, "name": "n", "slug": slug, "created_at": 1})


def _org_ids(database: Database) -> list[str]:
    with database.transaction() as conn:
        return [row["id"] for row in conn.execute("SELECT id FROM organizations ORDER BY id").fetchall()]


def test_transaction_commits_and_rolls_back(database: Database) -> None:
    _insert_org(database, "org-1", "a")
    with pytest.raises(RuntimeError), database.transaction(immediate=True) as conn:
        conn.run("insert_organization", {"id": "org-2", "name": "n", "slug": "b", "created_at": 1})
        raise RuntimeError
    assert _org_ids(database) == ["org-1"]


def test_nested_transaction_joins_the_outer_one(database: Database) -> None:
    with pytest.raises(RuntimeError), database.transaction(immediate=True) as outer:
        _insert_org(database, "org-1", "a")
        with database.transaction() as inner:
            assert inner is outer
        raise RuntimeError
    assert _org_ids(database) == []


def test_unique_violation_is_a_conflict(database: Database) -> None:
    _insert_org(database, "org-1", "a")
    with pytest.raises(Conflict):
        _insert_org(database, "org-2", "a")
    _insert_org(database, "org-3", "c")  # the connection is usable afterwards
    assert _org_ids(database) == ["org-1", "org-3"]


def test_text_holding_nul_is_refused_on_both_dialects_and_finds_nothing(database: Database) -> None:
    with pytest.raises(UnstorableText):
        _insert_org(database, "org-\x00", "a")
    with pytest.raises(UnstorableText), database.transaction() as conn:
        conn.fetch_tuples("SELECT id FROM organizations WHERE id = :id", {"id": "org-\x00"})
    with pytest.raises(NotFound):  # a lookup by such text: the object does not exist
        SQLMetadataStore(database).get_organization("org-\x00")
    _insert_org(database, "org-1", "a")  # the connection is usable afterwards
    assert _org_ids(database) == ["org-1"]


def test_rows_are_dicts_and_json_is_text(database: Database) -> None:
    with database.transaction() as conn:
        row = conn.execute("SELECT 1 AS one, CAST(:j AS TEXT) AS j", {"j": '{"a": 1}'}).fetchone()
    assert row == {"one": 1, "j": '{"a": 1}'}


def test_notify_wakes_a_listener_after_commit(database: Database) -> None:
    woke: list[bool] = []
    listening = threading.Event()

    def listen() -> None:
        listening.set()
        deadline = time.monotonic() + 5
        while not woke and time.monotonic() < deadline:
            if database.listen(JOBS_CHANNEL, 5):
                woke.append(True)

    thread = threading.Thread(target=listen)
    thread.start()
    listening.wait()
    time.sleep(0.2)  # let LISTEN reach the server
    with database.transaction(immediate=True) as conn:
        conn.notify(JOBS_CHANNEL)
    thread.join()
    assert woke == [True]


def test_listen_times_out(database: Database) -> None:
    start = time.monotonic()
    assert database.listen("tunewright_quiet", 0.05) is False
    assert time.monotonic() - start < 2


def test_ping_answers(database: Database) -> None:
    database.ping()


def test_open_database_picks_by_url(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path}/new/dir/tw.db", pool_size=2)
    try:
        assert isinstance(database, SQLiteDatabase)
        database.ping()
        assert (tmp_path / "new" / "dir" / "tw.db").exists()
    finally:
        database.close()
    with pytest.raises(ValueError, match="unsupported database URL"):
        open_database("mysql://x", pool_size=1)


def test_unopenable_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    database = SQLiteDatabase(tmp_path)  # a directory
    with pytest.raises(Unavailable):
        database.ping()
    database.close()


def test_unreachable_postgres_is_unavailable() -> None:
    database = PostgresDatabase("postgresql://postgres@127.0.0.1:1/none", pool_size=1, timeout_s=0.5)
    try:
        with pytest.raises(Unavailable):
            database.ping()
    finally:
        database.close()


def test_named_queries_and_overrides() -> None:
    queries = parse_queries("-- name: a\n-- a comment with :colon\nSELECT :x;\n\n-- name: b\nSELECT 2\n")
    assert queries == {"a": "SELECT :x", "b": "SELECT 2"}
    assert "pg_advisory_xact_lock" in load_queries("postgres")["lock_migrations"]
    assert load_queries("sqlite")["lock_migrations"] == "SELECT 1"
    assert "pg_notify" in load_queries("postgres")["notify"]
    assert [name for name, _ in load_migrations("sqlite")] == [name for name, _ in load_migrations("postgres")]


def test_placeholders_are_rewritten_for_psycopg() -> None:
    sql = "SELECT :a, x::jsonb, '{}'::jsonb, '50%' WHERE y = :b_2"
    assert to_pyformat(sql) == "SELECT %(a)s, x::jsonb, '{}'::jsonb, '50%%' WHERE y = %(b_2)s"


def test_split_script_keeps_statements_whole() -> None:
    script = "-- comment; not a statement\nCREATE TABLE a (x TEXT DEFAULT 'a;b');\nCREATE INDEX i ON a (x);\n"
    assert split_script(script) == ["CREATE TABLE a (x TEXT DEFAULT 'a;b');", "CREATE INDEX i ON a (x);"]


def test_a_failed_commit_leaves_the_connection_usable(tmp_path: Path) -> None:
    from tunewright.storage.metadata import SQLMetadataStore

    database = SQLiteDatabase(str(tmp_path / "t.db"))
    SQLMetadataStore(database).migrate()
    with pytest.raises(Exception, match="FOREIGN KEY"), database.transaction(immediate=True) as conn:
        # A deferred foreign-key violation is only found by COMMIT, which then fails.
        conn.execute("PRAGMA defer_foreign_keys = ON")
        conn.execute(
            "INSERT INTO upload_parts (id, upload_id, project_id, created_at, bytes, blob_key, sha256) "
            "VALUES ('part_1', 'upload_missing', 'p', 0, 0, 'k', 'h')"
        )
    _insert_org(database, "org-after", "after")
    assert "org-after" in _org_ids(database)
    database.close()

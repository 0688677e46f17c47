"""The database connector: one small API over sqlite3 and psycopg 3, so the stores are written once.

`SQLMetadataStore` and `SQLJobQueue` talk only to `Database`:

- `database.dialect` is `"sqlite"` or `"postgres"`.
- `database.query(name)` returns the named SQL of `storage/sql/queries.sql`, or of
  `storage/sql/<dialect>/queries.sql` where that dialect overrides it.
- `with database.transaction(immediate=...) as conn:` is one transaction: it commits when the block ends
  and rolls back when it raises. `conn.execute(sql, params)` returns a cursor whose `fetchone()` /
  `fetchall()` give rows as `dict`s (column name → value) and whose `rowcount` counts changed rows;
  `conn.run(name, params)` executes a named query; `conn.fetch_tuples(sql, params)` returns the column names
  and the rows as tuples, which list pages turn into records without a dict per row. A `transaction()`
  opened inside another one on the same thread joins it (no savepoint; on SQLite it keeps the outer one's
  lock mode), so helpers compose.
  With `RETURNING`, read the rows rather than `rowcount` (sqlite3 counts them only as they are fetched).
- `conn.notify(channel)` (sent at commit) and `database.notify(channel)` wake `database.listen(channel,
  timeout_s)`: PostgreSQL LISTEN/NOTIFY across processes; SQLite within the process, plus short polls.

Placeholders: SQL is always written with named parameters `:name` (sqlite3's style) and params are a mapping.
The PostgreSQL connection rewrites `:name` as psycopg's `%(name)s` (and `%` as `%%`) once per distinct
statement; `::type` casts are left alone, so keep `:word` out of string literals. PostgreSQL cannot infer the
type of a bare NULL parameter: write `CAST(:p AS type)` where a parameter may be None outside an INSERT/SET.

JSON columns come back as text on both dialects (JSONB is read with a text loader); records decode them.

Errors: a unique violation raises `Conflict` (abandon the transaction: PostgreSQL has aborted it); a refused
connection, an exhausted pool, a database file that cannot be opened or a lock held past the busy timeout
raise `DatabaseUnavailable` (an `Unavailable`); a full disk raises `DatabaseFull` (both an `InsufficientStorage`
and a `DatabaseUnavailable`). A text parameter holding NUL raises `UnstorableText` (a `NotFound`) on both
dialects before the driver sees it: PostgreSQL cannot take such text at all, and a lookup by it can match
nothing. Other driver errors pass through unchanged. PostgreSQL connections come from
`storage/pg_pool.py`, which replaces the connections that a server restart closed and fails fast while the
server is down.
"""

from __future__ import annotations

import functools
import logging
import operator
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import unquote, urlsplit

import psycopg
import psycopg_pool
from psycopg import sql as pgsql
from psycopg.rows import dict_row, tuple_row
from psycopg.types.string import TextLoader

from tunewright.storage.disk import create_private_file, make_private_dir
from tunewright.storage.errors import Conflict, DatabaseFull, DatabaseUnavailable, StorageError, UnstorableText
from tunewright.storage.pg_pool import ResilientPool
from tunewright.storage.queries import load_migrations, load_queries, split_script, to_pyformat

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from contextlib import AbstractContextManager

logger = logging.getLogger(__name__)

JOBS_CHANNEL = "tunewright_jobs"
"""The channel `insert_job` (and anything else that makes a job claimable) notifies and workers listen on."""


class Cursor(Protocol):
    """What `Connection.execute` returns: rows as dicts."""

    @property
    def rowcount(self) -> int:
        """Rows changed by an INSERT/UPDATE/DELETE."""
        ...

    def fetchone(self) -> Any:
        """Return the next row as a `dict[str, Any]`, or None."""
        ...

    def fetchall(self) -> Any:
        """Return the remaining rows as a `list[dict[str, Any]]`."""
        ...


def refuse_nul(params: Mapping[str, Any] | None) -> None:
    """Raise `UnstorableText` if a text parameter holds NUL (see the module docstring)."""
    if params and any(type(value) is str and "\x00" in value for value in params.values()):
        raise UnstorableText("text parameters cannot contain NUL (\\u0000)")


class Connection(ABC):
    """A connection inside an open transaction; valid only inside its `with database.transaction()` block."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.depth = 0

    @abstractmethod
    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Cursor:
        """Execute one statement written with `:name` placeholders.

        Raises:
            Conflict: a unique constraint was violated.
            Unavailable: the database did not answer.
        """

    def run(self, name: str, params: Mapping[str, Any] | None = None) -> Cursor:
        """Execute the named query `name` (see `Database.query`)."""
        return self.execute(self.database.query(name), params)

    @abstractmethod
    def fetch_tuples(self, sql: str, params: Mapping[str, Any]) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """Execute one query (as `execute`) and return its column names and every row as a tuple."""

    def executescript(self, script: str) -> None:
        """Execute `;`-separated statements without parameters (a migration) in this transaction."""
        for statement in split_script(script):
            self.execute(statement)

    @abstractmethod
    def notify(self, channel: str) -> None:
        """Wake listeners of `channel` when this transaction commits (nothing is sent on rollback)."""


class Database(ABC):
    """Connections with transactions, named queries, migrations and notifications."""

    dialect: ClassVar[str]
    reads_wait_on_network: ClassVar[bool] = False
    """True when every statement is a round trip to a server (see `MetadataStore.reads_wait_on_network`)."""

    def query(self, name: str) -> str:
        """Return the SQL of the named query for this dialect. `KeyError` if there is none."""
        return load_queries(self.dialect)[name]

    def migrations(self) -> tuple[tuple[str, str], ...]:
        """Return `(name, script)` of every migration of this dialect, in order."""
        return load_migrations(self.dialect)

    @abstractmethod
    def transaction(self, immediate: bool = False) -> AbstractContextManager[Connection]:
        """Open a transaction (or join this thread's open one); commit on success, roll back on an exception.

        Args:
            immediate: the transaction will write. SQLite then takes the write lock at BEGIN (`BEGIN
                IMMEDIATE`, waiting up to the busy timeout) rather than failing to upgrade a read lock later;
                PostgreSQL ignores it.

        Raises:
            Unavailable: no connection could be had, or the commit failed for want of one.
        """

    @abstractmethod
    def reading(self) -> AbstractContextManager[Connection]:
        """A connection for reads that need no transaction: each statement runs on its own (autocommit).

        Saves the BEGIN/COMMIT round trips on the hot read paths (authentication, list and get). Inside an
        open transaction of this thread it joins that transaction.
        """

    def notify(self, channel: str) -> None:
        """Wake listeners of `channel` now."""
        with self.transaction() as conn:
            conn.notify(channel)

    @abstractmethod
    def listen(self, channel: str, timeout_s: float) -> bool:
        """Wait until `channel` is notified or `timeout_s` passes; True if notified.

        It may return False early (SQLite polls), so callers re-check their condition in a loop.
        """

    def ping(self) -> None:
        """Run `SELECT 1`. Raises `Unavailable` if the database does not answer."""
        with self.transaction() as conn:
            conn.execute("SELECT 1").fetchone()

    @abstractmethod
    def close(self) -> None:
        """Close every connection; the object is unusable afterwards."""


def open_database(url: str, *, pool_size: int = 8) -> Database:
    """Open the database a URL names: `sqlite:///abs/path.db`, `postgresql://…` or `postgres://…`.

    Creates the SQLite file's folder (0700) and the file (0600; SQLite gives its `-wal` and `-shm` files the
    database file's mode) if missing; migrates nothing.

    Raises:
        ValueError: another scheme.
        Unavailable: the SQLite folder or file cannot be created.
    """
    if url.startswith("sqlite:///"):
        path = Path(unquote(urlsplit(url).path))
        try:
            make_private_dir(path.parent)
            create_private_file(path)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot create the database {path}") from exc
        return SQLiteDatabase(path)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, pool_size=pool_size)
    raise ValueError(f"unsupported database URL {url!r}: expected sqlite:///… or postgresql://…")


# --- SQLite ----------------------------------------------------------------------------------------------


def _sqlite_error(exc: sqlite3.Error) -> StorageError | None:
    """Map a sqlite3 error to a storage error, or None to let it through."""
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE constraint failed" in text:
        return Conflict(text)
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in text:
        return DatabaseFull(text)
    if isinstance(exc, sqlite3.OperationalError) and any(
        marker in text for marker in ("unable to open", "locked", "disk I/O")
    ):
        return DatabaseUnavailable(text)
    return None


class _DictCursor:
    """A sqlite3 cursor whose rows come back as dicts, column names read once per result set.

    (A `row_factory` would rebuild `cursor.description` for every row, which cost more than the query.)
    """

    __slots__ = ("_cursor", "_names")

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor
        self._names: tuple[str, ...] | None = None

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def _columns(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(map(_first, self._cursor.description or ()))
        return self._names

    def fetchone(self) -> dict[str, Any] | None:
        row = self._cursor.fetchone()
        return None if row is None else dict(zip(self._columns(), row, strict=True))

    def fetchall(self) -> list[dict[str, Any]]:
        names = self._columns()
        return [dict(zip(names, row, strict=True)) for row in self._cursor.fetchall()]


_first = operator.itemgetter(0)


def _enable_wal(raw: sqlite3.Connection, deadline: float) -> None:
    """Switch to WAL, retrying: the switch needs a lock that SQLite does not wait for on a new file."""
    while True:
        try:
            raw.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
        else:
            return


class _SQLiteConnection(Connection):
    """One thread's sqlite3 connection in autocommit mode: BEGIN/COMMIT are ours."""

    def __init__(self, database: SQLiteDatabase, raw: sqlite3.Connection) -> None:
        super().__init__(database)
        self.raw = raw
        self.after_commit: list[Callable[[], None]] = []

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Cursor:
        refuse_nul(params)
        try:
            return _DictCursor(self.raw.execute(sql, params or {}))
        except sqlite3.Error as exc:
            raise (_sqlite_error(exc) or exc) from exc

    def fetch_tuples(self, sql: str, params: Mapping[str, Any]) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        refuse_nul(params)
        try:
            cursor = self.raw.execute(sql, params)
            return tuple(map(_first, cursor.description or ())), cursor.fetchall()
        except sqlite3.Error as exc:
            raise (_sqlite_error(exc) or exc) from exc

    def notify(self, channel: str) -> None:
        database = self.database
        assert isinstance(database, SQLiteDatabase)
        self.after_commit.append(functools.partial(database.wake, channel))


class SQLiteDatabase(Database):
    """SQLite in WAL mode: one connection per thread, busy timeout 10 s, foreign keys on.

    Notifications reach listeners in this process only; `listen` returns after at most `poll_s`, so a worker
    in another process sees new rows within that delay.
    """

    dialect = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0, poll_s: float = 0.5) -> None:
        self.path = str(path)
        self.busy_timeout_s = busy_timeout_s
        self.poll_s = poll_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[_SQLiteConnection] = []
        self._conditions: dict[str, threading.Condition] = {}
        self._closed = False

    def _connection(self) -> _SQLiteConnection:
        if self._closed:
            raise DatabaseUnavailable("the database is closed")
        conn: _SQLiteConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            # check_same_thread=False only so that close() can close every thread's connection.
            raw = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
            raw.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            _enable_wal(raw, time.monotonic() + self.busy_timeout_s)
            raw.execute("PRAGMA foreign_keys=ON")
            raw.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise (_sqlite_error(exc) or DatabaseUnavailable(str(exc))) from exc
        conn = _SQLiteConnection(self, raw)
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def transaction(self, immediate: bool = False) -> Iterator[Connection]:
        """Open (or join) this thread's transaction; see `Database.transaction`."""
        conn = self._connection()
        if conn.depth:
            conn.depth += 1
            try:
                yield conn
            finally:
                conn.depth -= 1
            return
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        conn.depth = 1
        try:
            yield conn
        except BaseException:
            if conn.raw.in_transaction:
                conn.raw.execute("ROLLBACK")
            raise
        else:
            try:
                conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (disk full, a deferred constraint) leaves the transaction open: end it, or
                # every later BEGIN on this thread's connection would fail.
                if conn.raw.in_transaction:
                    conn.raw.execute("ROLLBACK")
                raise
            for callback in conn.after_commit:
                callback()
        finally:
            conn.depth = 0
            conn.after_commit.clear()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """See `Database.reading`: sqlite3 in autocommit mode runs each statement as its own transaction."""
        yield self._connection()

    def _condition(self, channel: str) -> threading.Condition:
        with self._lock:
            return self._conditions.setdefault(channel, threading.Condition())

    def wake(self, channel: str) -> None:
        """Wake this process's listeners of `channel`."""
        condition = self._condition(channel)
        with condition:
            condition.notify_all()

    def listen(self, channel: str, timeout_s: float) -> bool:
        """Wait for a notification from this process, at most `min(timeout_s, poll_s)` seconds."""
        condition = self._condition(channel)
        with condition:
            return condition.wait(max(0.0, min(timeout_s, self.poll_s)))

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.raw.close()


# --- PostgreSQL ------------------------------------------------------------------------------------------


def _postgres_error(exc: Exception) -> StorageError | None:
    """Map a psycopg or pool error to a storage error, or None to let it through."""
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return Conflict(str(exc).splitlines()[0] if str(exc) else "unique violation")
    if isinstance(exc, psycopg.errors.DiskFull):
        return DatabaseFull(str(exc).splitlines()[0] if str(exc) else "disk full")
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError | psycopg.InterfaceError):
        return DatabaseUnavailable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return None


class _PostgresConnection(Connection):
    """A pooled psycopg connection inside `conn.transaction()`."""

    def __init__(self, database: PostgresDatabase, raw: psycopg.Connection[Any]) -> None:
        super().__init__(database)
        self.raw = raw

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Cursor:
        refuse_nul(params)
        try:
            if params is None:
                return self.raw.execute(sql)  # without params psycopg sends the text as is
            return self.raw.execute(to_pyformat(sql), params)
        except psycopg.Error as exc:
            raise (_postgres_error(exc) or exc) from exc

    def fetch_tuples(self, sql: str, params: Mapping[str, Any]) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        refuse_nul(params)
        try:
            cursor = self.raw.cursor(row_factory=tuple_row)
            cursor.execute(to_pyformat(sql), params)
            result = cursor.pgresult
            if result is None:
                return (), []
            # The names straight from the result: `cursor.description` builds a Column (type lookups) per column.
            names = tuple(bytes(result.fname(i) or b"").decode() for i in range(result.nfields))
            return names, cursor.fetchall()
        except psycopg.Error as exc:
            raise (_postgres_error(exc) or exc) from exc

    def executescript(self, script: str) -> None:
        try:
            self.raw.execute(script.encode())  # no parameters: one simple-protocol round trip
        except psycopg.Error as exc:
            raise (_postgres_error(exc) or exc) from exc

    def notify(self, channel: str) -> None:
        self.run("notify", {"channel": channel})


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Read JSON and JSONB as text, as SQLite returns them."""
    conn.adapters.register_loader("jsonb", TextLoader)
    conn.adapters.register_loader("json", TextLoader)


class PostgresDatabase(Database):
    """PostgreSQL through a `ResilientPool` of autocommit connections (transactions are explicit)."""

    dialect = "postgres"
    reads_wait_on_network = True

    def __init__(self, url: str, *, pool_size: int = 8, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._pool = ResilientPool(
            url,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=_configure,
            timeout_s=timeout_s,
        )

    @contextmanager
    def transaction(self, immediate: bool = False) -> Iterator[Connection]:
        """Open (or join) this thread's transaction; see `Database.transaction`."""
        del immediate  # row locks come from the statements themselves
        current: _PostgresConnection | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        try:
            with self._pool.connection() as raw, raw.transaction():
                conn = _PostgresConnection(self, raw)
                self._local.conn = conn
                try:
                    yield conn
                finally:
                    self._local.conn = None
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise (_postgres_error(exc) or exc) from exc

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """See `Database.reading`: a pooled autocommit connection, no BEGIN/COMMIT."""
        current: _PostgresConnection | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        try:
            with self._pool.connection() as raw:
                yield _PostgresConnection(self, raw)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise (_postgres_error(exc) or exc) from exc

    def listen(self, channel: str, timeout_s: float) -> bool:
        """LISTEN on a pooled connection until one notification or the timeout."""
        identifier = pgsql.Identifier(channel)
        try:
            with self._pool.connection() as raw:
                raw.execute(pgsql.SQL("LISTEN {}").format(identifier))
                try:
                    return any(True for _ in raw.notifies(timeout=max(0.0, timeout_s), stop_after=1))
                finally:
                    raw.execute(pgsql.SQL("UNLISTEN {}").format(identifier))
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise (_postgres_error(exc) or exc) from exc

    def close(self) -> None:
        """Close the pool."""
        self._pool.close()

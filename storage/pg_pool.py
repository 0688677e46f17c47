"""PostgreSQL connections that survive a server restart and fail fast while the server is down.

`ResilientPool` wraps psycopg_pool's `ConnectionPool` for `PostgresDatabase`:

- **Restarts.** A server that closes a connection (restart, idle timeout, `pg_terminate_backend`) sends a last
  message and ends the stream, so the idle pooled connection's socket turns readable; a healthy idle connection
  has nothing to read. The pool's checkout check looks at the socket (no round trip) and only then confirms
  with an empty query; a dead connection is discarded and the pool hands out another one. So the first
  requests after a restart get live connections instead of a 503 each.
- **Outages.** A checkout that had to wait for a connection the pool cannot make would wait the whole pool
  timeout (10 s) before its 503. Instead, any sign of trouble (a pooled connection the server closed, a
  connection that broke in use, a wait longer than a short slice) makes the pool suspect an outage: one
  background probe opens a fresh connection. If that fails, the `OutageBreaker` opens and every checkout fails
  at once with `Unavailable` naming the probe's error; the probe retries every half second and closes the
  breaker as soon as the server answers. The pool's own reconnection gives up after `RECONNECT_S`, so once
  the server is back the next checkout connects at once rather than after a backoff as long as the outage.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg_pool

from tunewright.storage.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

WAIT_SLICE_S = 0.25
"""A checkout waits for a connection in slices this long, to notice an outage found meanwhile."""
RECONNECT_S = 2.0
"""How long the pool keeps reconnecting in the background before it leaves that to the next checkout."""
PROBE_CONNECT_S = 2
"""Connect timeout of the outage probe (libpq's smallest)."""


class OutageBreaker:
    """Whether a server is known to be down, kept current by a probe that runs only on suspicion.

    Args:
        probe: Connects to the server and returns, or raises when it does not answer.
        name: The server's name in log lines.
        probe_every_s: Pause between probes while the server is down.
        min_gap_s: While the server is up, suspicions closer together than this start no new probe.
    """

    def __init__(
        self, probe: Callable[[], None], *, name: str, probe_every_s: float = 0.5, min_gap_s: float = 1.0
    ) -> None:
        self._probe = probe
        self._name = name
        self._probe_every_s = probe_every_s
        self._min_gap_s = min_gap_s
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._probing = False
        self._last_probe = float("-inf")
        self._down_since: float | None = None
        self._reason: str | None = None

    @property
    def down_reason(self) -> str | None:
        """Why the server is down (the last probe's error), or None while it answers."""
        return self._reason

    def suspect(self, why: str) -> None:
        """Start a probe, unless one is running or (while up) one ran within `min_gap_s`."""
        with self._lock:
            if self._probing or self._closed.is_set():
                return
            if self._reason is None and time.monotonic() - self._last_probe < self._min_gap_s:
                return
            self._probing = True
        logger.debug("%s: probing (%s)", self._name, why)
        threading.Thread(target=self._run, name=f"probe-{self._name}", daemon=True).start()

    def close(self) -> None:
        """Stop probing for good (the database is being closed)."""
        self._closed.set()

    def _run(self) -> None:
        while True:
            try:
                self._probe()
            except Exception as exc:  # noqa: BLE001 - any failure to connect means the server is down
                self._mark_down(exc)
                if self._closed.wait(self._probe_every_s):
                    with self._lock:
                        self._probing = False
                    return
                continue
            self._mark_up()
            return

    def _mark_down(self, exc: Exception) -> None:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
            # The reason reaches /healthz, which needs no key: leave the server's address out of it.
            self._reason = detail.rpartition(" failed: ")[2]
        if first:
            logger.warning("%s is unreachable (%s): requests fail at once until it answers again", self._name, detail)

    def _mark_up(self) -> None:
        with self._lock:
            down_since, self._down_since = self._down_since, None
            self._reason = None
            self._probing = False
            self._last_probe = time.monotonic()
        if down_since is not None:
            logger.warning("%s answers again after %.1f s", self._name, time.monotonic() - down_since)


def _readable(fd: int) -> bool:
    """Whether a socket has bytes (or the end of its stream) waiting, without blocking."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class ResilientPool:
    """A pool of PostgreSQL connections with the restart and outage handling of the module docstring.

    Args:
        url: The libpq URL.
        max_size: Most connections open at once (one is kept open).
        kwargs: Connection options (`autocommit`, `row_factory`).
        configure: Called on every new connection.
        timeout_s: Longest wait for a connection while the server answers.
    """

    def __init__(
        self,
        url: str,
        *,
        max_size: int,
        kwargs: dict[str, Any],
        configure: Callable[[psycopg.Connection[Any]], None],
        timeout_s: float,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.outage = OutageBreaker(self._probe, name="PostgreSQL")
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs=kwargs,
            configure=configure,
            check=self._check_idle,
            max_idle=300,
            timeout=timeout_s,
            reconnect_timeout=RECONNECT_S,
            name="tunewright",
            open=True,
        )

    def _probe(self) -> None:
        """Open and close one connection outside the pool."""
        psycopg.connect(self.url, connect_timeout=PROBE_CONNECT_S).close()

    def _check_idle(self, conn: psycopg.Connection[Any]) -> None:
        """At checkout: raise (so the pool discards it) if the server closed this connection while it was idle."""
        if not _readable(conn.pgconn.socket):
            return
        try:
            conn.execute("")  # something to read: a notification, a notice, or the server's goodbye
        except psycopg.Error:
            self.outage.suspect("a pooled connection was closed by the server")
            raise

    def _checkout(self) -> psycopg.Connection[Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            reason = self.outage.down_reason
            if reason is not None:
                raise DatabaseUnavailable(f"PostgreSQL is unreachable: {reason}")
            remaining = deadline - time.monotonic()
            try:
                return self._pool.getconn(timeout=max(0.0, min(WAIT_SLICE_S, remaining)))
            except psycopg_pool.PoolTimeout as exc:
                if remaining <= WAIT_SLICE_S:
                    raise DatabaseUnavailable(f"no PostgreSQL connection within {self.timeout_s:g} s") from exc
                self.outage.suspect("no pooled connection within a short wait")

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for the block, returned to the pool after it.

        Raises:
            Unavailable: the server is known to be down, or no connection came within the pool timeout.
        """
        raw = self._checkout()
        try:
            yield raw
        finally:
            if raw.broken:
                self.outage.suspect("a connection broke while in use")
            self._pool.putconn(raw)

    def close(self) -> None:
        """Stop probing and close every connection."""
        self.outage.close()
        self._pool.close()

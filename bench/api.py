"""API throughput: `GET /v1/fine_tuning/jobs?limit=20` (authenticated, 1,000 jobs stored) under wrk.

Four servers run side by side on granian (1 ASGI worker each, same flags), measured in interleaved rounds:
Tunewright itself (its real entry point, `tunewright.api.asgi:create_app_from_env`), the same with its job-list
page cache off (`tunewright-nocache`: every page read and rendered from the database, what a poll costs right
after the project's jobs changed), a Litestar hello-world with the same middleware and exception handlers
(`bench/apps.py`), and a bare ASGI hello-world. The table gives the median requests/s and p99 latency over
the rounds, and each server's share of the Litestar hello-world's requests/s (the goal in issue 10 is at least
25% for Tunewright).

    .venv/bin/python bench/api.py                       # SQLite in a temp dir
    .venv/bin/python bench/api.py --database postgresql://postgres@127.0.0.1:5432/postgres

With `--database`, a scratch database is created on that server (CREATE DATABASE) and dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from data import make_jobs, make_tenant
from server import Process, granian, load_average

from tunewright.storage.registry import open_stores
from tunewright.storage.settings import ENV_PREFIX, load_settings

if TYPE_CHECKING:
    from collections.abc import Iterator

JOBS_PATH = "/v1/fine_tuning/jobs?limit=20"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
NO_PAGE_CACHE = {ENV_PREFIX + "JOB_LIST_CACHE_BYTES": "0"}
"""The second Tunewright arm: every page rendered from the database (api/fine_tuning/list_cache.py off)."""


class Result:
    """One wrk run: requests/s, p99 latency in ms, and any errors wrk reported."""

    def __init__(self, rps: float, p99_ms: float, errors: str) -> None:
        """Hold the figures."""
        self.rps = rps
        self.p99_ms = p99_ms
        self.errors = errors


def parse_wrk(output: str) -> Result:
    """Read requests/s, the 99th percentile and error lines from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if rps is None or p99 is None:
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith(("Non-2xx", "Socket errors"))]
    return Result(float(rps.group(1)), float(p99.group(1)) * _UNITS[p99.group(2)], "; ".join(errors))


def run_wrk(url: str, *, headers: dict[str, str], threads: int, connections: int, duration_s: int) -> Result:
    """One `wrk --latency` run against `url`."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    completed = subprocess.run(argv, capture_output=True, text=True, check=True)
    return parse_wrk(completed.stdout)


def get_json(url: str, headers: dict[str, str]) -> Any:
    """GET `url` and decode its JSON body (raises on a non-2xx answer)."""
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def scratch_database(url: str | None, tmp: Path) -> Iterator[str]:
    """SQLite in `tmp`, or a fresh database on the PostgreSQL server of `url`, dropped afterwards."""
    if url is None:
        yield f"sqlite:///{tmp / 'data' / 'tunewright.db'}"
        return
    import psycopg

    name = f"tunewright_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(database_url: str, data_dir: Path, jobs: int) -> str:
    """Migrate, create a tenant and `jobs` jobs; return the tenant's key."""
    settings = load_settings({}, data_dir=str(data_dir), database_url=database_url)
    stores = open_stores(settings)
    try:
        stores.metadata.migrate()
        tenant = make_tenant(stores, "bench")
        make_jobs(stores, tenant, jobs)
    finally:
        stores.close()
    return tenant.key


def server_env(database_url: str, data_dir: Path) -> dict[str, str]:
    """This environment without other `TUNEWRIGHT_*` settings, plus the benchmark's data dir and database.

    The per-key limit stays on but out of reach (its check is part of the cost measured): at its default
    6,000 a minute, nearly every request of a 10 s run would be a 429.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(
        {
            ENV_PREFIX + "DATA_DIR": str(data_dir),
            ENV_PREFIX + "DATABASE_URL": database_url,
            ENV_PREFIX + "LOG_LEVEL": "WARNING",
            ENV_PREFIX + "KEY_REQUESTS_PER_MINUTE": str(10**9),
        }
    )
    return env


def check_targets(targets: list[tuple[str, str, dict[str, str]]], jobs: int) -> None:
    """Make sure each URL answers what we mean to measure before timing it."""
    for name, url, headers in targets:
        body = get_json(url, headers)
        if name.startswith("tunewright"):
            if len(body["data"]) != min(20, jobs) or body["has_more"] != (jobs > 20):
                raise RuntimeError(f"unexpected jobs page: {len(body['data'])} items, has_more={body['has_more']}")
        elif "message" not in body:
            raise RuntimeError(f"{name}: unexpected body {body!r}")


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", help="postgresql://… server to create a scratch database on (default: SQLite)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs stored (default: 1000)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default: 10)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default: 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default: 32)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (default: 3)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="tunewright-bench-api-"))
    data_dir = tmp / "data"
    try:
        with scratch_database(args.database, tmp) as database_url:
            key = seed(database_url, data_dir, args.jobs)
            env = server_env(database_url, data_dir)
            servers = {
                "tunewright": granian(
                    "tunewright", "tunewright.api.asgi:create_app_from_env", log_dir=tmp, factory=True
                ),
                "tunewright-nocache": granian(
                    "tunewright-nocache", "tunewright.api.asgi:create_app_from_env", log_dir=tmp, factory=True
                ),
                "litestar-hello": granian("litestar-hello", "apps:litestar_hello", log_dir=tmp, factory=True),
                "bare-asgi-hello": granian("bare-asgi-hello", "apps:bare_hello", log_dir=tmp),
            }
            with contextlib.ExitStack() as stack:
                for name, process in servers.items():
                    stack.enter_context(process.start(env | NO_PAGE_CACHE if name.endswith("nocache") else env))
                measure(servers, key, args, database_url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def measure(servers: dict[str, Process], key: str, args: argparse.Namespace, database_url: str) -> None:
    """Warm each server up, run the interleaved rounds, print the table."""
    auth = {"Authorization": f"Bearer {key}"}
    targets = [
        ("tunewright", servers["tunewright"].url + JOBS_PATH, auth),
        ("tunewright-nocache", servers["tunewright-nocache"].url + JOBS_PATH, auth),
        ("litestar-hello", servers["litestar-hello"].url + "/hello", {}),
        ("bare-asgi-hello", servers["bare-asgi-hello"].url + "/hello", {}),
    ]
    check_targets(targets, args.jobs)
    wrk = {"threads": args.threads, "connections": args.connections}
    load_before = load_average()
    for _name, url, headers in targets:
        run_wrk(url, headers=headers, duration_s=2, **wrk)  # warm-up: imports, caches, connection pools
    runs: dict[str, list[Result]] = {name: [] for name, _, _ in targets}
    for round_no in range(1, args.rounds + 1):
        for name, url, headers in targets:
            result = run_wrk(url, headers=headers, duration_s=args.duration, **wrk)
            runs[name].append(result)
            extra = f"  [{result.errors}]" if result.errors else ""
            print(
                f"round {round_no} {name:18} {result.rps:10.0f} req/s  p99 {result.p99_ms:8.2f} ms{extra}", flush=True
            )
    load_after = load_average()

    database = "PostgreSQL" if database_url.startswith("postgres") else "SQLite"
    print()
    print(f"GET {JOBS_PATH} ({args.jobs} jobs stored, {database}) vs hello-worlds")
    print(
        f"granian 1 ASGI worker; wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency; "
        f"median of {args.rounds} interleaved rounds; {os.cpu_count()} CPUs"
    )
    print(f"load average before: {load_before}   after: {load_after}")
    print()
    litestar_rps = statistics.median(r.rps for r in runs["litestar-hello"])
    print(f"| {'server':<18} | {'req/s':>9} | {'p99 ms':>8} | {'vs litestar-hello':>17} |")
    print(f"| {'-' * 18} | {'-' * 9}:| {'-' * 8}:| {'-' * 17}:|")
    for name, results in runs.items():
        rps = statistics.median(r.rps for r in results)
        p99 = statistics.median(r.p99_ms for r in results)
        print(f"| {name:<18} | {rps:9.0f} | {p99:8.2f} | {rps / litestar_rps:17.1%} |")
    ours = statistics.median(r.rps for r in runs["tunewright"]) / litestar_rps
    verdict = "meets" if ours >= 0.25 else "misses"
    print(f"\nTunewright / litestar-hello = {ours:.1%} ({verdict} the >= 25% goal)")
    uncached = statistics.median(r.rps for r in runs["tunewright-nocache"]) / litestar_rps
    print(f"without the page cache (every page rendered from the database): {uncached:.1%}")


if __name__ == "__main__":
    sys.exit(main())

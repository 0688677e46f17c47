"""Rate-limit overhead: requests/s with limits off, counted in the process, and counted in Redis, in one run.

Four `tunewright` servers run side by side on granian (1 ASGI worker each, the real entry point
`tunewright.api.asgi:create_app_from_env`, SQLite, the tiny model as base model, 1 torch thread), differing only
in their rate-limit settings:

- **off**: `TUNEWRIGHT_RATE_LIMITS=false`;
- **memory**: limits on, counters in the process;
- **redis-direct**: limits on, counters in Redis (`--redis`, default `redis://127.0.0.1:6379/0`, under a key
  prefix of the run's own, deleted at the end), every request asking Redis (`TUNEWRIGHT_REDIS_LEASE_S=0`);
- **redis**: the same with the default per-process leases (api/ratelimits/leases.py).

The limits are set far above what the run can reach, so every request pays the check and none is refused (the
script fails if wrk reports a non-2xx answer). Measured under wrk in interleaved rounds: `GET /v1/models`
(the per-key limit) and a one-token `POST /v1/chat/completions` on the tiny model (the per-project-and-model
limits, the headers, the settlement of unused tokens). The table gives median requests/s and each arm's ratio
to `off` (the goal in issue 11: at most 10% overhead, a ratio of at least 0.90), and the median CPU time the
server (granian's processes) used per request served, which a shared machine disturbs less than requests/s.

Then, because wrk's rounds on a shared machine move by more than the effect, the cost per request in the
process: the same four apps built in this process and called directly as ASGI apps, sequential
`GET /v1/models`, CPU time (`time.process_time`: this process only, not Redis's) and wall time per request,
the minimum over `--cpu-rounds` interleaved rounds of `--cpu-requests` requests. `--cpu-only` skips wrk.

    .venv/bin/python bench/metering.py [--duration 10] [--rounds 3] [--connections 32] [--chat-connections 8]
                                       [--cpu-rounds 7] [--cpu-requests 1000] [--cpu-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data import make_tenant
from server import Process, ProcessTree, granian, load_average

from api import Result, parse_wrk, server_env
from tunewright.api.app import create_app
from tunewright.modeling.tiny import make_tiny
from tunewright.storage.registry import open_stores
from tunewright.storage.settings import ENV_PREFIX, load_settings

TINY = "tiny-llama"
HIGH = str(10**9)
CHAT_BODY = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0}
ARMS = ("off", "memory", "redis-direct", "redis")

if TYPE_CHECKING:
    from litestar import Litestar


def seed(database_url: str, data_dir: Path) -> str:
    """Migrate and create a tenant; return its key."""
    stores = open_stores(load_settings({}, data_dir=str(data_dir), database_url=database_url))
    try:
        stores.metadata.migrate()
        return make_tenant(stores, "bench").key
    finally:
        stores.close()


def arm_env(base: dict[str, str], arm: str, redis_url: str, prefix: str) -> dict[str, str]:
    """The environment of one arm's server."""
    env = dict(base)
    if arm == "off":
        env[ENV_PREFIX + "RATE_LIMITS"] = "false"
        return env
    for name in ("RATE_LIMIT_REQUESTS_PER_MINUTE", "RATE_LIMIT_TOKENS_PER_MINUTE", "KEY_REQUESTS_PER_MINUTE"):
        env[ENV_PREFIX + name] = HIGH
    if arm.startswith("redis"):
        env[ENV_PREFIX + "REDIS_URL"] = redis_url
        env[ENV_PREFIX + "REDIS_KEY_PREFIX"] = prefix
        # A loaded machine can stall Redis past the default 0.1 s: measure the check, not the fail-open path.
        env[ENV_PREFIX + "REDIS_TIMEOUT_S"] = "2"
    if arm == "redis-direct":
        env[ENV_PREFIX + "REDIS_LEASE_S"] = "0"
    return env


def run_wrk(url: str, *, key: str, script: Path | None, threads: int, connections: int, duration_s: int) -> Result:
    """One `wrk --latency` run; `script` makes it a POST of the chat body."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    argv += ["-H", f"Authorization: Bearer {key}"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    return parse_wrk(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def check(url: str, key: str, *, limited: bool) -> None:
    """One chat through the server: 200, with the rate-limit headers exactly when limits are on."""
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(CHAT_BODY).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        has_headers = response.headers.get("x-ratelimit-limit-requests") is not None
    if has_headers != limited:
        raise RuntimeError(f"{url}: rate-limit headers {'missing' if limited else 'present'}")


def drop_keys(redis_url: str, prefix: str) -> int:
    """Delete the run's keys from Redis; how many there were."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + ":*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis for the `redis` arm")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default: 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default: 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections on GET /v1/models")
    parser.add_argument("--chat-connections", type=int, default=8, help="wrk connections on chat completions")
    parser.add_argument("--cpu-rounds", type=int, default=7, help="in-process rounds; minimums are reported")
    parser.add_argument("--cpu-requests", type=int, default=1000, help="requests per arm and in-process round")
    parser.add_argument("--cpu-only", action="store_true", help="only the in-process measurement (no wrk)")
    args = parser.parse_args()
    if not args.cpu_only and shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="tunewright-bench-metering-"))
    prefix = "tw-bench-" + secrets.token_hex(4)
    try:
        data_dir = tmp / "data"
        database_url = f"sqlite:///{data_dir / 'tunewright.db'}"
        key = seed(database_url, data_dir)
        tiny = make_tiny(tmp / "tiny")
        base = server_env(database_url, data_dir)
        base.update({ENV_PREFIX + "BASE_MODELS": f"{TINY}={tiny}", ENV_PREFIX + "TORCH_THREADS": "1"})
        script = tmp / "chat.lua"
        body = json.dumps(CHAT_BODY).replace("'", "\\'")
        script.write_text(
            f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n"
        )
        envs = {arm: arm_env(base, arm, args.redis, prefix) for arm in ARMS}
        if not args.cpu_only:
            servers = {
                arm: granian(arm, "tunewright.api.asgi:create_app_from_env", log_dir=tmp, factory=True) for arm in ARMS
            }
            with contextlib.ExitStack() as stack:
                for arm, process in servers.items():
                    stack.enter_context(process.start(envs[arm]))
                measure(servers, key, script, args)
        asyncio.run(in_process(envs, key, args))
    finally:
        print(f"\nRedis keys of the run deleted: {drop_keys(args.redis, prefix)}")
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def measure(servers: dict[str, Process], key: str, script: Path, args: argparse.Namespace) -> None:
    """Warm up, run the interleaved rounds, print the table."""
    for arm, process in servers.items():
        check(process.url, key, limited=arm != "off")  # also loads the model
    routes = {
        "GET /v1/models": ("/v1/models", None, args.connections),
        "chat (tiny, 1 token)": ("/v1/chat/completions", script, args.chat_connections),
    }
    load_before = load_average()
    for path, lua, connections in routes.values():
        for process in servers.values():
            wrk = {"threads": args.threads, "connections": connections}
            run_wrk(process.url + path, key=key, script=lua, duration_s=2, **wrk)  # warm-up
    runs: dict[tuple[str, str], list[Result]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    trees = {arm: ProcessTree(process.pid) for arm, process in servers.items()}
    for round_no in range(1, args.rounds + 1):
        for route, (path, lua, connections) in routes.items():
            for arm, process in servers.items():
                cpu_before = trees[arm].cpu_s()
                result = run_wrk(
                    process.url + path,
                    key=key,
                    script=lua,
                    threads=args.threads,
                    connections=connections,
                    duration_s=args.duration,
                )
                used_us = (trees[arm].cpu_s() - cpu_before) * 1e6 / (result.rps * args.duration)
                if result.errors:
                    raise RuntimeError(f"{arm} {route}: {result.errors}")
                runs.setdefault((route, arm), []).append(result)
                cpu.setdefault((route, arm), []).append(used_us)
                print(
                    f"round {round_no} {route:22} {arm:12} {result.rps:9.0f} req/s  p99 {result.p99_ms:8.2f} ms"
                    f"  server CPU {used_us:6.0f} µs/request"
                )
    load_after = load_average()
    print(f"\nload average {load_before} -> {load_after}; {args.rounds} rounds of {args.duration} s, medians\n")
    print("| route | arm | req/s | p99 ms | vs off | per round | server CPU µs/request | vs off (CPU) |")
    print("| --- | --- | --:| --:| --:| --- | --:| --:|")
    for route in routes:
        off = [r.rps for r in runs[(route, "off")]]
        off_cpu = statistics.median(cpu[(route, "off")])
        for arm in ARMS:
            results = runs[(route, arm)]
            rps = statistics.median(r.rps for r in results)
            p99 = statistics.median(r.p99_ms for r in results)
            ratios = " / ".join(f"{r.rps / o:.2f}" for r, o in zip(results, off, strict=True))
            used = statistics.median(cpu[(route, arm)])
            extra = "" if arm == "off" else f"{(used / off_cpu - 1) * 100:+.1f}%"
            print(
                f"| {route} | {arm} | {rps:.0f} | {p99:.1f} | {rps / statistics.median(off):.2f}x | {ratios} "
                f"| {used:.0f} | {extra} |"
            )


async def in_process(envs: dict[str, dict[str, str]], key: str, args: argparse.Namespace) -> None:
    """Each arm's app built here and called directly: CPU and wall µs per sequential `GET /v1/models`."""
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"host", b"bench")]
    apps: dict[str, Litestar] = {}
    lifespans: list[Lifespan] = []
    cpu: dict[str, list[float]] = {arm: [] for arm in ARMS}
    wall: dict[str, list[float]] = {arm: [] for arm in ARMS}
    try:
        for arm in ARMS:
            settings = load_settings(envs[arm])
            stores = open_stores(settings)
            apps[arm] = create_app(settings, stores, sweep=False, send_webhooks=False)
            apps[arm].on_shutdown.append(stores.close)
            lifespans.append(await Lifespan.start(apps[arm]))
            for _ in range(200):  # warm-up
                await asgi_get(apps[arm], "/v1/models", headers)
        load_before = load_average()
        for _ in range(args.cpu_rounds):
            for arm, app in apps.items():
                cpu_start, wall_start = time.process_time(), time.perf_counter()
                for _ in range(args.cpu_requests):
                    status = await asgi_get(app, "/v1/models", headers)
                    if status != 200:
                        raise RuntimeError(f"{arm}: GET /v1/models answered {status}")
                cpu[arm].append((time.process_time() - cpu_start) / args.cpu_requests * 1e6)
                wall[arm].append((time.perf_counter() - wall_start) / args.cpu_requests * 1e6)
        load_after = load_average()
    finally:
        for lifespan in lifespans:
            await lifespan.stop()
    print(f"\nin process: load average {load_before} -> {load_after}; min of {args.cpu_rounds} rounds")
    print(f"of {args.cpu_requests} sequential GET /v1/models per arm\n")
    print("| arm | CPU µs/request | wall µs/request | vs off (CPU) |")
    print("| --- | --:| --:| --:|")
    off = min(cpu["off"])
    for arm in ARMS:
        extra = "" if arm == "off" else f"{(min(cpu[arm]) / off - 1) * 100:+.1f}%"
        print(f"| {arm} | {min(cpu[arm]):.0f} | {min(wall[arm]):.0f} | {extra} |")


async def asgi_get(app: Litestar, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    """One GET through the ASGI app, no server; the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)  # type: ignore[arg-type]
    return status


class Lifespan:
    """An app's ASGI lifespan, driven by hand (startup, then shutdown)."""

    def __init__(self, app: Litestar) -> None:
        """Not started: use `Lifespan.start`."""
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._task = asyncio.create_task(app(scope, self._inbox.get, self._outbox.put))  # type: ignore[arg-type]

    @classmethod
    async def start(cls, app: Litestar) -> Lifespan:
        """Run `app`'s startup."""
        lifespan = cls(app)
        await lifespan._inbox.put({"type": "lifespan.startup"})
        message = await lifespan._outbox.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"startup failed: {message}")
        return lifespan

    async def stop(self) -> None:
        """Run its shutdown."""
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._outbox.get()
        await self._task


if __name__ == "__main__":
    raise SystemExit(main())

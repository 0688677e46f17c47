"""Rate-limit overhead: requests/s with limits off, counted in the process, and counted in Redis, in one run.

Three `tunewright` servers run side by side on granian (1 ASGI worker each, the real entry point
`tunewright.api.asgi:create_app_from_env`, SQLite, the tiny model as base model, 1 torch thread), differing only
in their rate-limit settings:

- **off**: `TUNEWRIGHT_RATE_LIMITS=false`;
- **memory**: limits on, counters in the process;
- **redis**: limits on, counters in Redis (`--redis`, default `redis://127.0.0.1:6379/0`, under a key prefix of
  the run's own, deleted at the end).

The limits are set far above what the run can reach, so every request pays the check and none is refused (the
script fails if wrk reports a non-2xx answer). Measured under wrk in interleaved rounds: `GET /v1/models`
(the per-key limit) and a one-token `POST /v1/chat/completions` on the tiny model (the per-project-and-model
limits, the headers, the settlement of unused tokens). The table gives median requests/s and each arm's ratio
to `off` (the goal in issue 11: at most 10% overhead, a ratio of at least 0.90).

    .venv/bin/python bench/metering.py [--duration 10] [--rounds 3] [--connections 32] [--chat-connections 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from data import make_tenant
from server import Process, granian, load_average

from api import Result, parse_wrk, server_env
from tunewright.modeling.tiny import make_tiny
from tunewright.storage.registry import open_stores
from tunewright.storage.settings import ENV_PREFIX, load_settings

TINY = "tiny-llama"
HIGH = str(10**9)
CHAT_BODY = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0}
ARMS = ("off", "memory", "redis")


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
    if arm == "redis":
        env[ENV_PREFIX + "REDIS_URL"] = redis_url
        env[ENV_PREFIX + "REDIS_KEY_PREFIX"] = prefix
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
    args = parser.parse_args()
    if shutil.which("wrk") is None:
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
        servers = {
            arm: granian(arm, "tunewright.api.asgi:create_app_from_env", log_dir=tmp, factory=True) for arm in ARMS
        }
        with contextlib.ExitStack() as stack:
            for arm, process in servers.items():
                stack.enter_context(process.start(arm_env(base, arm, args.redis, prefix)))
            measure(servers, key, script, args)
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
    for round_no in range(1, args.rounds + 1):
        for route, (path, lua, connections) in routes.items():
            for arm, process in servers.items():
                result = run_wrk(
                    process.url + path,
                    key=key,
                    script=lua,
                    threads=args.threads,
                    connections=connections,
                    duration_s=args.duration,
                )
                if result.errors:
                    raise RuntimeError(f"{arm} {route}: {result.errors}")
                runs.setdefault((route, arm), []).append(result)
                print(f"round {round_no} {route:22} {arm:7} {result.rps:9.0f} req/s  p99 {result.p99_ms:8.2f} ms")
    load_after = load_average()
    print(f"\nload average {load_before} -> {load_after}; {args.rounds} rounds of {args.duration} s, medians\n")
    print("| route | arm | req/s | p99 ms | vs off | per round |")
    print("| --- | --- | --:| --:| --:| --- |")
    for route in routes:
        off = [r.rps for r in runs[(route, "off")]]
        for arm in ARMS:
            results = runs[(route, arm)]
            rps = statistics.median(r.rps for r in results)
            p99 = statistics.median(r.p99_ms for r in results)
            ratios = " / ".join(f"{r.rps / o:.2f}" for r, o in zip(results, off, strict=True))
            print(f"| {route} | {arm} | {rps:.0f} | {p99:.1f} | {rps / statistics.median(off):.2f}x | {ratios} |")


if __name__ == "__main__":
    raise SystemExit(main())

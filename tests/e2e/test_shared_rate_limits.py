"""Rate limits hold across API processes: two `tunewright serve` on one database and one Redis share them.

Each process would admit the whole limit if it counted alone; together they admit exactly the limit, or (a
busy per-key limit, spent from per-process leases) no more than Redis alone would. A Redis that dies under a
running server fails open: requests go on being answered, never with a 5xx.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
import redis
from fixtures.app import OPERATOR_KEY, make_tenant
from fixtures.server import server_env, start_serve, stop_server
from fixtures.training import TINY

from tunewright.storage.registry import open_stores
from tunewright.storage.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from fixtures.app import Tenant

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DAILY_LIMIT = 12
REQUESTS = 40
KEY_LIMIT = 300  # a minute: leased at most 5 at a time (what 1 s refills)
KEY_REQUESTS = 600


@pytest.fixture
def start(tmp_path: Path, tiny_dir: Path) -> Iterator[Callable[[str, str], str]]:
    """Start a `serve` (no trainers) on the shared SQLite database with `redis_url`; returns its URL."""
    processes: list[Any] = []
    database_url = f"sqlite:///{tmp_path / 'shared.db'}"

    def launch(name: str, redis_url: str, prefix: str = "tw-e2e", **settings: str) -> str:
        env = server_env(tmp_path / name, {"TUNEWRIGHT_DATABASE_URL": database_url})
        env.update(
            {
                "TUNEWRIGHT_ADMIN_KEY": OPERATOR_KEY,
                "TUNEWRIGHT_BASE_MODELS": f"{TINY}={tiny_dir}",
                "TUNEWRIGHT_REDIS_URL": redis_url,
                "TUNEWRIGHT_REDIS_KEY_PREFIX": prefix,
                "TUNEWRIGHT_REDIS_RETRY_S": "0.5",
                **{f"TUNEWRIGHT_{name.upper()}": value for name, value in settings.items()},
            }
        )
        (tmp_path / name).mkdir()
        url, process = start_serve(env, tmp_path / name / "serve.log")
        processes.append(process)
        return url

    yield launch
    for process in processes:
        stop_server(process)


def tenant_of(tmp_path: Path) -> Tenant:
    stores = open_stores(
        load_settings({}, data_dir=str(tmp_path / "seed"), database_url=f"sqlite:///{tmp_path / 'shared.db'}")
    )
    try:
        return make_tenant(stores, "acme")  # `serve` has migrated the database by now
    finally:
        stores.close()


def set_limit(url: str, tenant: Tenant, **limits: int) -> None:
    admin = openai.OpenAI(
        base_url=url + "/v1", admin_api_key=OPERATOR_KEY, organization=tenant.organization_id, max_retries=0
    )
    admin.admin.organization.projects.rate_limits.update_rate_limit(
        f"rl-{TINY}", project_id=tenant.project_id, **limits
    )


def ask(url: str, key: str) -> int:
    """One tiny chat completion through the SDK; its status."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
    try:
        client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    except openai.RateLimitError as err:
        assert err.code == "rate_limit_exceeded"
        assert "on requests per day (RPD)" in err.body["message"]
        return 429
    return 200


def list_models(url: str, key: str, client: httpx.Client | None = None) -> int:
    return (client or httpx).get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


def script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


def test_two_processes_on_one_redis_admit_no_more_than_the_limit_together(
    start: Callable[..., str], tmp_path: Path, private_redis: Any
) -> None:
    first = start("first", private_redis.url, key_requests_per_minute=str(KEY_LIMIT))
    second = start("second", private_redis.url, key_requests_per_minute=str(KEY_LIMIT))
    tenant = tenant_of(tmp_path)
    set_limit(first, tenant, max_requests_per_1_day=DAILY_LIMIT, max_requests_per_1_minute=1000)
    for url in (first, second):  # load the model in both before the race
        assert list_models(url, tenant.key) == 200
    targets = [first if i % 2 else second for i in range(REQUESTS)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda url: (url, ask(url, tenant.key)), targets))
    admitted = [url for url, status in statuses if status == 200]
    assert len(admitted) == DAILY_LIMIT  # never more; and exactly, since nothing else refused (a daily limit of
    assert {first, second} <= set(admitted)  # 12 refills nothing in a second: never leased); both admitted some
    assert sum(status == 429 for _, status in statuses) == REQUESTS - DAILY_LIMIT

    # The per-key limit of the other routes, busy enough to be leased to each process in slices.
    client = redis.Redis.from_url(private_redis.url)
    commands = script_calls(client)
    targets = [first if i % 2 else second for i in range(KEY_REQUESTS)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool, httpx.Client() as http:
        statuses = list(pool.map(lambda url: (url, list_models(url, tenant.key, http)), targets))
    refilled = math.ceil(KEY_LIMIT * (time.monotonic() - started) / 60)
    commands = script_calls(client) - commands
    admitted = [url for url, status in statuses if status == 200]
    assert {status for _, status in statuses} == {200, 429}
    # The processes held nothing when the race began (a key's first request takes no slice): no more than Redis
    # alone admits, a full bucket (the 2 requests above were refilled long ago) and what it refilled meanwhile ...
    assert len(admitted) <= KEY_LIMIT + refilled
    # ... and no fewer than the bucket, less at most a slice each process held unspent when it was refused.
    assert len(admitted) >= KEY_LIMIT - 2 * 5
    assert {first, second} <= set(admitted)
    assert commands < KEY_REQUESTS / 3, commands  # most requests never reached Redis


def test_a_server_whose_redis_dies_keeps_answering(
    start: Callable[..., str], tmp_path: Path, private_redis: Any
) -> None:
    url = start("only", private_redis.url, redis_lease_s="0.2")
    tenant = tenant_of(tmp_path)
    set_limit(url, tenant, max_requests_per_1_day=2)
    assert [ask(url, tenant.key) for _ in range(3)] == [200, 200, 429]
    private_redis.stop()
    time.sleep(0.2)  # a refusal is remembered in the process for at most the lease duration
    assert [ask(url, tenant.key) for _ in range(3)] == [200, 200, 200]  # fail open, never a 5xx
    files = httpx.get(f"{url}/v1/files", headers={"Authorization": f"Bearer {tenant.key}"})
    assert files.status_code == 200
    metrics = httpx.get(f"{url}/metrics").text
    assert "tunewright_ratelimit_unchecked_requests_total" in metrics
    log = (tmp_path / "only" / "serve.log").read_text()
    assert "rate-limit counters: Redis failed" in log

"""Project rate limits through the real openai SDK: the admin API, and their enforcement on inference.

The admin routes run on both store backends; enforcement runs on the tiny model with the counters in this
process and in Redis (a key prefix of the test's own on the shared test Redis).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import time
from typing import TYPE_CHECKING, Any

import openai
import pytest
from fixtures.app import BASE_URL, OPERATOR_KEY, make_key
from fixtures.chat import fake_model, rendered_prompt_tokens
from fixtures.contract import validate_error, validate_operation
from fixtures.training import TINY, training_settings
from litestar.testing import TestClient

from tunewright.api.app import create_app
from tunewright.api.ratelimits.counters import Limit
from tunewright.api.ratelimits.redis_counters import RedisCounters

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

HELLO = [{"role": "user", "content": "Say hello."}]
SIX = [f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset") for kind in ("requests", "tokens")]
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")
RATE_MESSAGE = re.compile(
    r"^Rate limit reached for (?P<model>\S+) in project (?P<project>\S+) on (?P<what>.+): "
    r"Limit (?P<limit>\d+), Used (?P<used>\d+), Requested (?P<requested>\d+)\. Please try again in (?P<wait>\S+)\.$"
)


@pytest.fixture(params=["memory", "redis"])
def counters(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings naming where the counters live."""
    if request.param == "memory":
        return {}
    return {
        "redis_url": request.getfixturevalue("redis_url"),
        "redis_key_prefix": request.getfixturevalue("redis_prefix"),
    }


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings a test changes (by overriding this fixture)."""
    return {}


@pytest.fixture
def settings(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    backend: str,
    tiny_dir: Path,
    counters: dict[str, Any],
    overrides: Any,
) -> Any:
    base = training_settings(request, tmp_path, backend, tiny_dir)
    return type(base)(**{**{f: getattr(base, f) for f in base.__struct_fields__}, **counters, **overrides})


@pytest.fixture
def http(app: Any) -> Iterator[TestClient[Any]]:
    with TestClient(app, base_url="http://testserver.local") as client:
        yield client


@pytest.fixture
def admin(http: TestClient[Any], stores: Any, tenants: Any) -> openai.OpenAI:
    key = make_key(stores, organization_id=tenants["a"].organization_id, project_id=None, kind="admin").secret_hash
    return openai.OpenAI(base_url=BASE_URL, admin_api_key=key, http_client=http, max_retries=0)


def rate_limits(admin: openai.OpenAI) -> Any:
    return admin.admin.organization.projects.rate_limits


def set_limits(admin: openai.OpenAI, project_id: str, **limits: int) -> Any:
    return rate_limits(admin).update_rate_limit(f"rl-{TINY}", project_id=project_id, **limits)


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    """A raw chat completion (headers and parsed body)."""
    body = {"model": TINY, "messages": HELLO, "max_tokens": 2, "temperature": 0, **kwargs}
    return client.chat.completions.with_raw_response.create(**body)


def check_headers(headers: Any, *, requests: int, tokens: int) -> dict[str, int]:
    """The six headers are there and well formed; returns the remaining counts."""
    assert all(name in headers for name in SIX), dict(headers)
    assert (int(headers["x-ratelimit-limit-requests"]), int(headers["x-ratelimit-limit-tokens"])) == (requests, tokens)
    assert DURATION.match(headers["x-ratelimit-reset-requests"]), headers["x-ratelimit-reset-requests"]
    assert DURATION.match(headers["x-ratelimit-reset-tokens"]), headers["x-ratelimit-reset-tokens"]
    return {
        "requests": int(headers["x-ratelimit-remaining-requests"]),
        "tokens": int(headers["x-ratelimit-remaining-tokens"]),
    }


# ------------------------------------------------------------------------------------------ admin API


@pytest.mark.parametrize("counters", ["memory"], indirect=True)
def test_a_project_lists_one_limit_per_base_model_with_the_defaults(admin, http, tenants, settings):
    project = tenants["a"].project_id
    listed = rate_limits(admin).list_rate_limits(project)
    assert [(r.id, r.model, r.object) for r in listed.data] == [
        ("rl-smollm2-135m-instruct", "smollm2-135m-instruct", "project.rate_limit"),
        (f"rl-{TINY}", TINY, "project.rate_limit"),
    ]
    first = listed.data[0]
    assert (first.max_requests_per_1_minute, first.max_tokens_per_1_minute) == (
        settings.rate_limit_requests_per_minute,
        settings.rate_limit_tokens_per_minute,
    )
    assert first.max_requests_per_1_day is None  # no daily limit by default: left out, as OpenAI does
    raw = http.get(
        f"/v1/organization/projects/{project}/rate_limits", headers={"Authorization": f"Bearer {OPERATOR_KEY}"}
    )
    validate_operation(raw.json(), "list-project-rate-limits")
    assert [r.id for r in rate_limits(admin).list_rate_limits(project, limit=1)] == [r.id for r in listed.data]
    page = rate_limits(admin).list_rate_limits(project, limit=1)
    assert (page.has_more, page.last_id) == (True, "rl-smollm2-135m-instruct")
    assert [r.id for r in rate_limits(admin).list_rate_limits(project, before=f"rl-{TINY}").data] == [first.id]
    with pytest.raises(openai.BadRequestError) as err:
        rate_limits(admin).list_rate_limits(project, after="rl-gpt-4")
    assert (err.value.param, err.value.code) == ("after", "invalid_value")


@pytest.mark.parametrize("counters", ["memory"], indirect=True)
def test_updating_a_limit_changes_what_is_sent_in_that_project_only(admin, http, tenants, stores):
    a, a2 = tenants["a"].project_id, tenants["a2"].project_id
    updated = set_limits(admin, a, max_requests_per_1_minute=5, max_requests_per_1_day=50)
    assert (updated.id, updated.model, updated.max_requests_per_1_minute, updated.max_requests_per_1_day) == (
        f"rl-{TINY}",
        TINY,
        5,
        50,
    )
    again = set_limits(admin, a, max_tokens_per_1_minute=700)
    assert (again.max_requests_per_1_minute, again.max_tokens_per_1_minute) == (5, 700)
    assert set_limits(admin, a, max_requests_per_1_day=0).max_requests_per_1_day is None  # 0 removes it
    other = {r.model: r for r in rate_limits(admin).list_rate_limits(a2)}[TINY]
    assert other.max_requests_per_1_minute != 5
    raw = http.post(
        f"/v1/organization/projects/{a}/rate_limits/rl-{TINY}",
        headers={"Authorization": f"Bearer {OPERATOR_KEY}"},
        json={"max_requests_per_1_minute": 6},
    )
    assert raw.status_code == 200
    validate_operation(raw.json(), "update-project-rate-limits")
    assert set(raw.json()) == {"object", "id", "model", "max_requests_per_1_minute", "max_tokens_per_1_minute"}


@pytest.mark.parametrize("counters", ["memory"], indirect=True)
@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"max_images_per_1_minute": 3}, 400, "max_images_per_1_minute", "unsupported_parameter"),
        ({"max_audio_megabytes_per_1_minute": 3}, 400, "max_audio_megabytes_per_1_minute", "unsupported_parameter"),
        ({"batch_1_day_max_input_tokens": 3}, 400, "batch_1_day_max_input_tokens", "unsupported_parameter"),
        ({"max_requests_per_1_minute": 0}, 400, "max_requests_per_1_minute", "invalid_value"),
        ({"max_tokens_per_1_minute": "many"}, 400, "max_tokens_per_1_minute", "invalid_type"),
        ({"max_requests_per_1_hour": 3}, 400, "max_requests_per_1_hour", "unknown_parameter"),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_bad_updates_are_400_naming_the_field(http, tenants, body, status, param, code):
    response = http.post(
        f"/v1/organization/projects/{tenants['a'].project_id}/rate_limits/rl-{TINY}",
        headers={"Authorization": f"Bearer {OPERATOR_KEY}"},
        json=body,
    )
    assert response.status_code == status
    validate_error(response.json())
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (param, code)


@pytest.mark.parametrize("counters", ["memory"], indirect=True)
def test_rate_limit_routes_keep_to_the_callers_organization(admin, http, stores, tenants):
    limits = rate_limits(admin)
    foreign = tenants["b"].project_id
    for call in (
        lambda: limits.list_rate_limits(foreign),
        lambda: limits.update_rate_limit(f"rl-{TINY}", project_id=foreign, max_requests_per_1_minute=1),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.code == "project_not_found"
    with pytest.raises(openai.NotFoundError) as err:
        limits.update_rate_limit("rl-gpt-4", project_id=tenants["a"].project_id, max_requests_per_1_minute=1)
    assert (err.value.code, err.value.param) == ("rate_limit_not_found", "rate_limit_id")
    for key in (tenants["a"].key, tenants["b"].key):  # project keys, own project or not
        project_keyed = openai.OpenAI(base_url=BASE_URL, admin_api_key=key, http_client=http, max_retries=0)
        with pytest.raises(openai.PermissionDeniedError) as denied:
            rate_limits(project_keyed).list_rate_limits(tenants["a"].project_id)
        assert denied.value.code == "insufficient_permissions"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=BASE_URL, admin_api_key="sk-admin-nope", http_client=http, max_retries=0
        ).admin.organization.projects.rate_limits.list_rate_limits(tenants["a"].project_id)
    admin.admin.organization.projects.archive(tenants["a2"].project_id)
    assert limits.list_rate_limits(tenants["a2"].project_id).data  # readable
    with pytest.raises(openai.BadRequestError) as err:
        limits.update_rate_limit(f"rl-{TINY}", project_id=tenants["a2"].project_id, max_requests_per_1_minute=1)
    assert err.value.code == "project_archived"


# ------------------------------------------------------------------------------------------ enforcement


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_requests_over_the_minute_limit_are_429_with_openais_message_and_headers(admin, client_a, http, tenants):
    project = tenants["a"].project_id
    set_limits(admin, project, max_requests_per_1_minute=2, max_tokens_per_1_minute=100_000)
    first, second = chat(client_a), chat(client_a)
    assert check_headers(first.headers, requests=2, tokens=100_000)["requests"] == 1
    assert check_headers(second.headers, requests=2, tokens=100_000)["requests"] == 0
    with pytest.raises(openai.RateLimitError) as err:
        chat(client_a)
    assert (err.value.code, err.value.type, err.value.param) == ("rate_limit_exceeded", "requests", None)
    validate_error(err.value.response.json())
    found = RATE_MESSAGE.match(err.value.message.split(" - ", 1)[-1]) or RATE_MESSAGE.match(err.value.body["message"])
    assert found, err.value.body["message"]
    assert (found["model"], found["project"], found["what"]) == (TINY, project, "requests per min (RPM)")
    assert (found["limit"], found["used"], found["requested"]) == ("2", "2", "1")
    assert DURATION.match(found["wait"])
    headers = err.value.response.headers
    check_headers(headers, requests=2, tokens=100_000)
    assert 1 <= int(headers["retry-after"]) <= 30
    assert 0 < int(headers["retry-after-ms"]) <= 30_000
    assert "x-should-retry" not in headers  # worth retrying after the wait
    metrics = http.get("/metrics").text
    assert f'tunewright_ratelimit_rejections_total{{limit="requests_per_minute",model="{TINY}"}} 1.0' in metrics
    assert chat(openai.OpenAI(base_url=BASE_URL, api_key=tenants["a2"].key, http_client=http, max_retries=0))


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_tokens_are_charged_at_admission_and_what_was_not_generated_comes_back(admin, client_a, tenants, tokenizer):
    set_limits(admin, tenants["a"].project_id, max_requests_per_1_minute=100, max_tokens_per_1_minute=400)
    prompt = rendered_prompt_tokens(tokenizer, HELLO)
    ends = {str(tokenizer.convert_tokens_to_ids("<|im_end|>")): 100}  # the first token ends the answer
    first = chat(client_a, max_tokens=150, logit_bias=ends)
    used = first.parse().usage.total_tokens
    assert used < prompt + 150
    assert check_headers(first.headers, requests=100, tokens=400)["tokens"] <= 400 - (prompt + 150) + 1
    second = chat(client_a, max_tokens=150)
    # The first request's unused budget came back when it ended (replenishment alone adds ~7 tokens a second).
    assert check_headers(second.headers, requests=100, tokens=400)["tokens"] >= 400 - used - (prompt + 150) - 1
    with pytest.raises(openai.RateLimitError) as err:
        chat(client_a, max_tokens=300)  # more than what is left
    assert (err.value.code, err.value.type) == ("rate_limit_exceeded", "tokens")
    assert "on tokens per min (TPM): Limit 400, Used " in err.value.body["message"]
    assert f"Requested {prompt + 300}. Please try again in " in err.value.body["message"]
    with pytest.raises(openai.RateLimitError) as err:
        chat(client_a, max_tokens=450)  # could never fit
    assert err.value.body["message"].startswith(f"Request too large for {TINY} in project ")
    assert err.value.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_streams_legacy_completions_and_failures_after_admission_carry_the_headers(admin, client_a, stores, tenants):
    tenant = tenants["a"]
    set_limits(admin, tenant.project_id, max_requests_per_1_minute=10, max_tokens_per_1_minute=5_000)
    with client_a.chat.completions.with_streaming_response.create(
        model=TINY, messages=HELLO, max_tokens=3, stream=True
    ) as stream:
        assert check_headers(stream.headers, requests=10, tokens=5_000)["requests"] == 9
        assert "[DONE]" in stream.read().decode()
    legacy = client_a.completions.with_raw_response.create(model=TINY, prompt=["a", "b"], max_tokens=2, n=2)
    assert check_headers(legacy.headers, requests=10, tokens=5_000)["requests"] == 8
    # A fine-tuned model counts against its base; this one's adapter is missing, so it fails after admission.
    name = fake_model(stores, tenant, TINY)
    with pytest.raises(openai.APIStatusError) as err:
        chat(client_a, model=name, max_tokens=200)
    assert err.value.status_code >= 500
    failed = check_headers(err.value.response.headers, requests=10, tokens=5_000)
    assert failed["requests"] == 7
    after = check_headers(chat(client_a).headers, requests=10, tokens=5_000)
    assert after["tokens"] >= failed["tokens"] + 150  # its 200 unused came back (this one took ~16)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.parametrize("counters", ["redis"], indirect=True)
def test_leased_limits_keep_the_headers_close_to_what_redis_counts(admin, client_a, tenants, settings):
    project = tenants["a"].project_id
    set_limits(admin, project, max_requests_per_1_minute=6000, max_tokens_per_1_minute=1_000_000)
    started = time.monotonic()
    left = [check_headers(chat(client_a, max_tokens=1).headers, requests=6000, tokens=1_000_000) for _ in range(12)]
    refilled = math.ceil((time.monotonic() - started) * 100) + 1  # 6,000 a minute: 0.1 a ms
    requests = [remaining["requests"] for remaining in left]
    assert requests[0] == 5999
    # Each request takes one, whether from Redis or from this process's slice (at most 100: 1 s of refill).
    assert all(1 - refilled <= a - b <= 1 for a, b in itertools.pairwise(requests))
    assert requests[-1] <= 6000 - 12 + refilled

    async def in_redis() -> int:
        counters = RedisCounters(settings.redis_url, prefix=settings.redis_key_prefix, timeout_s=1, retry_s=1)
        try:
            probe = Limit(f"rl:{{{project}:{TINY}}}:rpm", 6000, 60_000, 0)
            return (await counters.take([probe])).remaining[0]
        finally:
            await counters.close()

    # Redis counts the process's unspent slice as taken; the headers count it as remaining.
    assert requests[-1] - 100 <= asyncio.run(in_redis()) <= requests[-1] + refilled


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.parametrize("overrides", [{"key_requests_per_minute": 3}])
def test_other_routes_are_limited_per_key_and_inference_is_not_counted_there(client_a, http, tenants, overrides):
    for _ in range(3):
        client_a.models.list()
    assert chat(client_a)  # the inference routes have their own limits
    with pytest.raises(openai.RateLimitError) as err:
        client_a.files.list()
    assert err.value.code == "rate_limit_exceeded"
    assert err.value.body["message"].startswith(f"Rate limit reached for requests in API key {tenants['a'].key_id}")
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert err.value.response.headers["x-ratelimit-limit-requests"] == "3"
    client_b = openai.OpenAI(base_url=BASE_URL, api_key=tenants["b"].key, http_client=http, max_retries=0)
    assert client_b.models.list()  # another key has its own
    operator = {"Authorization": f"Bearer {OPERATOR_KEY}", "OpenAI-Organization": tenants["a"].organization_id}
    assert all(http.get("/v1/organization/projects", headers=operator).status_code == 200 for _ in range(5))
    assert (
        'tunewright_ratelimit_rejections_total{limit="key_requests_per_minute",model=""} 1.0'
        in http.get("/metrics").text
    )


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.parametrize("counters", ["memory"], indirect=True)
@pytest.mark.parametrize("overrides", [{"rate_limits": False, "key_requests_per_minute": 1}])
def test_with_rate_limits_off_nothing_is_limited_or_announced(admin, client_a, tenants, overrides):
    set_limits(admin, tenants["a"].project_id, max_requests_per_1_minute=1)
    replies = [chat(client_a) for _ in range(3)]
    assert not any(name in replies[-1].headers for name in SIX)
    assert len(client_a.models.list().data) >= 1


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.parametrize("counters", ["memory"], indirect=True)
def test_redis_down_fails_open_with_a_metric_never_a_500(tmp_path, stores, tenants, settings):
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("tunewright.api.ratelimits.redis_counters").addHandler(handler)
    down = type(settings)(
        **{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "redis_url": "redis://127.0.0.1:9/0"}
    )
    app = create_app(down, stores, sweep=False)
    with TestClient(app, base_url="http://testserver.local") as http:
        client = openai.OpenAI(base_url=BASE_URL, api_key=tenants["a"].key, http_client=http, max_retries=0)
        for _ in range(3):
            assert client.models.list().data
        reply = chat(client)
        assert reply.parse().choices
        assert "x-ratelimit-limit-requests" in reply.headers  # the limits, as configured, though unchecked
        metrics = http.get("/metrics").text
    assert "tunewright_ratelimit_redis_errors_total 1.0" in metrics  # one try; the breaker kept the rest away
    assert "tunewright_ratelimit_unchecked_requests_total 4.0" in metrics
    logging.getLogger("tunewright.api.ratelimits.redis_counters").removeHandler(handler)
    assert sum("Redis failed" in line for line in logged) == 1  # logged once, not once per request

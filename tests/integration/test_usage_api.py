"""/v1/organization/usage/… and /v1/organization/costs through the real openai SDK, on both backends.

Sums are checked against the `usage` objects the same requests returned, and costs against tokens times the
configured prices. Bodies validate against OpenAI's `usage-completions` and `usage-costs` operations.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from fixtures.app import BASE_URL, OPERATOR_KEY, backend_settings, make_key
from fixtures.contract import schema_for, validate, validate_error, validate_operation
from fixtures.metering import store_usage
from fixtures.training import TINY, TRAINING_SETTINGS, run_worker

from tunewright.storage.sweeps import sweep_once

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
HELLO = [{"role": "user", "content": "Say hello."}]
PRICES = {
    TINY: {"input": 0.10, "output": 0.40, "training": 3.00},
    "default": {"input": 7.0},
    "storage": {"gb_month": 0.02},
}
DAY = 86_400
T0 = 1_700_000_000 - 1_700_000_000 % DAY  # a UTC midnight in the past


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Any:
    return backend_settings(
        request, tmp_path, backend, base_models={TINY: str(tiny_dir)}, prices=PRICES, **TRAINING_SETTINGS
    )


@pytest.fixture
def admin_key(stores: Any, tenants: Any) -> str:
    """An admin key of organization `acme` (projects `a` and `a2`)."""
    return make_key(stores, organization_id=tenants["a"].organization_id, project_id=None, kind="admin").secret_hash


def admin_client(http: Any, key: str, organization: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=BASE_URL, admin_api_key=key, organization=organization, http_client=http, max_retries=0
    )


def get(http: Any, key: str, path: str, **params: Any) -> Any:
    return http.get(f"/v1/organization{path}", headers={"Authorization": f"Bearer {key}"}, params=params)


def results(page: Any) -> list[Any]:
    return [result for bucket in page.data for result in bucket.results]


# --- exactness with real requests ---------------------------------------------------------------------


def test_usage_sums_equal_the_usage_the_requests_returned(http, sdk, stores, tenants, admin_key):
    started = int(time.time())
    client_a, client_a2, client_b = (sdk(tenants[name].key) for name in ("a", "a2", "b"))
    second_key = make_key(stores, organization_id=tenants["a"].organization_id, project_id=tenants["a"].project_id)
    returned = {
        "a": [
            client_a.chat.completions.create(model=TINY, messages=HELLO, max_tokens=4, n=2).usage,
            client_a.completions.create(model=TINY, prompt=["one", "two three"], max_tokens=3).usage,
            sdk(second_key.secret_hash).chat.completions.create(model=TINY, messages=HELLO, max_tokens=2).usage,
        ],
        "a2": [client_a2.chat.completions.create(model=TINY, messages=HELLO, max_tokens=5).usage],
        "b": [client_b.chat.completions.create(model=TINY, messages=HELLO, max_tokens=6).usage],
    }
    streamed = client_a.chat.completions.create(
        model=TINY, messages=HELLO, max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    returned["a"].append(list(streamed)[-1].usage)
    usage = admin_client(http, admin_key).admin.organization.usage

    page = usage.completions(start_time=started, end_time=int(time.time()) + 1)
    (total,) = results(page)
    acme = returned["a"] + returned["a2"]
    assert total.input_tokens == sum(u.prompt_tokens for u in acme)
    assert total.output_tokens == sum(u.completion_tokens for u in acme)
    assert total.num_model_requests == len(acme)
    assert (total.project_id, total.api_key_id, total.model, total.batch) == (None, None, None, None)

    by_project = usage.completions(start_time=started, group_by=["project_id"], bucket_width="1m", limit=1440)
    sums: dict[str, list[int]] = {}
    for result in results(by_project):
        sums.setdefault(result.project_id, [0, 0])
        sums[result.project_id][0] += result.input_tokens
        sums[result.project_id][1] += result.output_tokens
    assert sums == {
        tenants[name].project_id: [
            sum(u.prompt_tokens for u in returned[name]),
            sum(u.completion_tokens for u in returned[name]),
        ]
        for name in ("a", "a2")
    }
    by_key = usage.completions(
        start_time=started, group_by=["api_key_id", "model"], project_ids=[tenants["a"].project_id]
    )
    keys = {r.api_key_id: r.num_model_requests for r in results(by_key)}
    assert keys == {tenants["a"].key_id: 3, second_key.id: 1}
    assert {r.model for r in results(by_key)} == {TINY}

    raw = get(http, admin_key, "/usage/completions", start_time=started, **{"group_by[]": "project_id"})
    assert raw.status_code == 200
    validate_operation(raw.json(), "usage-completions")


def test_costs_are_tokens_times_prices_per_line_item(http, client_a, stores, settings, tenants, admin_key):
    today = int(time.time()) // DAY * DAY
    chat = client_a.chat.completions.create(model=TINY, messages=HELLO, max_tokens=4).usage
    client_a.files.create(file=("train.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune")
    stored = (ASSETS / "valid_chat.jsonl").stat().st_size
    sweep_once(stores, settings)
    usage = admin_client(http, admin_key).admin.organization.usage

    page = usage.costs(start_time=today, group_by=["line_item", "project_id"], limit=1)
    lines = {r.line_item: r for r in results(page)}
    assert set(lines) == {f"{TINY}, input_tokens", f"{TINY}, output_tokens", "storage"}
    expected = {
        f"{TINY}, input_tokens": (chat.prompt_tokens, Decimal(chat.prompt_tokens) * Decimal("0.10") / 1_000_000),
        f"{TINY}, output_tokens": (chat.completion_tokens, Decimal(chat.completion_tokens) * Decimal("0.40") / 10**6),
        "storage": (stored * 24 / 2**30, Decimal(stored) / 2**30 * Decimal("0.02") / 30),
    }
    for name, (quantity, amount) in expected.items():
        line = lines[name]
        assert line.amount.value == pytest.approx(float(amount), rel=1e-12)
        assert line.amount.currency == "usd"
        assert line.quantity == pytest.approx(quantity)
        assert line.quantity_unit == ("gibibyte_hours" if name == "storage" else "tokens")
        assert line.project_id == tenants["a"].project_id
    (total,) = results(usage.costs(start_time=today, limit=1))
    assert total.amount.value == pytest.approx(float(sum(amount for _, amount in expected.values())), rel=1e-12)
    assert (total.line_item, total.quantity, total.quantity_unit) == (None, None, None)
    only = usage.costs(start_time=today, group_by=["line_item"], line_items=["storage"], limit=1)
    assert [r.line_item for r in results(only)] == ["storage"]

    raw = get(http, admin_key, "/costs", start_time=today, limit=1, **{"group_by[]": ["line_item", "project_id"]})
    assert raw.status_code == 200
    validate_operation(raw.json(), "usage-costs")


def test_training_is_billed_at_the_base_models_price_and_so_is_its_fine_tuned_model(
    http, client_a, stores, settings, tenants, admin_key
):
    started = int(time.time())
    training = client_a.files.create(file=("t.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune")
    job = client_a.fine_tuning.jobs.create(
        model=TINY,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )
    assert run_worker(settings, stores) == ["succeeded"]
    done = client_a.fine_tuning.jobs.retrieve(job.id)
    steps = stores.metadata.list_training_usage(job.id, project_id=tenants["a"].project_id)
    assert [row.step for row in steps] == list(range(1, len(steps) + 1))
    assert done.trained_tokens == sum(row.trained_tokens for row in steps) > 0
    reply = client_a.chat.completions.create(model=done.fine_tuned_model, messages=HELLO, max_tokens=3)

    body = admin_client(http, admin_key).get(  # the extension, through the SDK's generic request
        "/organization/usage/fine_tuning",
        cast_to=object,
        options={
            "params": {"start_time": started, "group_by": ["project_id", "model"]},
            "security": {"admin_api_key_auth": True},
        },
    )
    validate(dict(body, data=[dict(b, results=[]) for b in body["data"]]), schema_for("UsageResponse"))
    (result,) = [r for bucket in body["data"] for r in bucket["results"]]
    assert result == {
        "object": "organization.usage.fine_tuning.result",
        "trained_tokens": done.trained_tokens,
        "num_jobs": 1,
        "project_id": tenants["a"].project_id,
        "model": TINY,
    }
    usage = admin_client(http, admin_key).admin.organization.usage
    by_model = {r.model: r for r in results(usage.completions(start_time=started, group_by=["model"]))}
    assert by_model[done.fine_tuned_model].input_tokens == reply.usage.prompt_tokens
    lines = {r.line_item: r for r in results(usage.costs(start_time=started, group_by=["line_item"]))}
    assert lines[f"{TINY}, training_tokens"].quantity == done.trained_tokens
    assert lines[f"{TINY}, training_tokens"].amount.value == pytest.approx(done.trained_tokens * 3.0 / 1e6)
    assert lines[f"{TINY}, input_tokens"].quantity == reply.usage.prompt_tokens  # billed as its base model


# --- buckets, pages and parameters ---------------------------------------------------------------------


def test_buckets_cover_the_range_and_pages_follow_next_page(http, stores, tenants, admin_key):
    for minute, prompt in ((0, 1), (0, 2), (2, 4), (4, 8)):
        store_usage(stores, tenants["a"], T0 + minute * 60 + 5, prompt, 1)
    usage = admin_client(http, admin_key).admin.organization.usage
    end = T0 + 5 * 60 - 30  # the last bucket is cut at end_time
    first = usage.completions(start_time=T0, end_time=end, bucket_width="1m", limit=2)
    assert [(b.start_time, b.end_time) for b in first.data] == [(T0, T0 + 60), (T0 + 60, T0 + 120)]
    assert [[r.input_tokens for r in b.results] for b in first.data] == [[3], []]
    assert first.has_more
    assert first.next_page is not None
    second = usage.completions(start_time=T0, end_time=end, bucket_width="1m", limit=2, page=first.next_page)
    third = usage.completions(start_time=T0, end_time=end, bucket_width="1m", limit=2, page=second.next_page)
    assert [[r.input_tokens for r in b.results] for b in second.data + third.data] == [[4], [], [8]]
    assert third.data[-1].end_time == end
    assert (third.has_more, third.next_page) == (False, None)
    days = usage.completions(start_time=T0, end_time=T0 + 10 * DAY)
    assert len(days.data) == 7  # OpenAI's default for 1d
    assert days.has_more


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({}, "start_time", "missing_required_parameter"),
        ({"start_time": T0, "end_time": T0}, "end_time", "invalid_value"),
        ({"start_time": -1}, "start_time", "invalid_value"),
        ({"start_time": T0, "bucket_width": "1w"}, "bucket_width", "invalid_value"),
        ({"start_time": T0, "limit": 32}, "limit", "invalid_value"),
        ({"start_time": T0, "bucket_width": "1h", "limit": 169}, "limit", "invalid_value"),
        ({"start_time": T0, "bucket_width": "1m", "limit": 1441}, "limit", "invalid_value"),
        ({"start_time": T0, "limit": 0}, "limit", "invalid_value"),
        ({"start_time": T0, "page": "page_nonsense"}, "page", "invalid_value"),
        ({"start_time": T0, "group_by[]": "region"}, "group_by", "invalid_value"),
        ({"start_time": T0, "user_ids[]": "user-1"}, "user_ids", "unsupported_parameter"),
        ({"start_time": "soon"}, "start_time", "invalid_type"),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_bad_usage_parameters_are_400_naming_them(http, admin_key, params, param, code):
    response = get(http, admin_key, "/usage/completions", **params)
    assert response.status_code == 400, response.text
    body = response.json()
    validate_error(body)
    assert (body["error"]["param"], body["error"]["code"]) == (param, code)


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/costs", {"start_time": T0, "bucket_width": "1h"}, "bucket_width"),
        ("/costs", {"start_time": T0, "limit": 181}, "limit"),
        ("/costs", {"start_time": T0, "group_by[]": "model"}, "group_by"),
        ("/usage/fine_tuning", {"start_time": T0, "group_by[]": "api_key_id"}, "group_by"),
        ("/usage/fine_tuning", {"start_time": T0, "api_key_ids[]": "key_x"}, "api_key_ids"),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_bad_costs_and_fine_tuning_parameters_are_400_naming_them(http, admin_key, path, params, param):
    response = get(http, admin_key, path, **params)
    assert response.status_code == 400, response.text
    validate_error(response.json())
    assert response.json()["error"]["param"] == param


def test_groups_tunewright_cannot_tell_apart_have_one_value(http, stores, tenants, admin_key):
    store_usage(stores, tenants["a"], T0 + 5, 10, 1)
    usage = admin_client(http, admin_key).admin.organization.usage
    (result,) = results(
        usage.completions(start_time=T0, end_time=T0 + DAY, group_by=["user_id", "batch", "service_tier", "api_source"])
    )
    assert (result.user_id, result.batch, result.service_tier, result.api_source) == (
        None,
        False,
        "default",
        "unlabeled",
    )
    assert results(usage.completions(start_time=T0, end_time=T0 + DAY, batch=True)) == []
    assert results(usage.completions(start_time=T0, end_time=T0 + DAY, batch=False))[0].input_tokens == 10


# --- keys and tenancy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/usage/completions", "/usage/fine_tuning", "/costs"])
def test_project_keys_are_refused_and_a_missing_key_is_401(http, tenants, path):
    for tenant in ("a", "b"):
        response = get(http, tenants[tenant].key, path, start_time=T0)
        assert response.status_code == 403
        validate_error(response.json())
        assert response.json()["error"]["code"] == "insufficient_permissions"
    response = http.get(f"/v1/organization{path}", params={"start_time": T0})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_the_sdk_raises_permission_denied_for_a_project_key(http, tenants):
    usage = admin_client(http, tenants["a"].key).admin.organization.usage
    with pytest.raises(openai.PermissionDeniedError) as err:
        usage.completions(start_time=T0)
    assert err.value.code == "insufficient_permissions"
    with pytest.raises(openai.PermissionDeniedError):
        usage.costs(start_time=T0)


def test_each_admin_key_reads_its_own_organization_and_the_operator_every_one(http, stores, tenants, admin_key):
    store_usage(stores, tenants["a"], T0 + 1, 1, 0)
    store_usage(stores, tenants["a2"], T0 + 1, 10, 0)
    store_usage(stores, tenants["b"], T0 + 1, 100, 0)
    globex = make_key(stores, organization_id=tenants["b"].organization_id, project_id=None, kind="admin")

    def total(key: str, organization: str | None = None, **kw: Any) -> int:
        usage = admin_client(http, key, organization).admin.organization.usage
        return sum(r.input_tokens for r in results(usage.completions(start_time=T0, end_time=T0 + DAY, **kw)))

    assert total(admin_key) == 11
    assert total(globex.secret_hash) == 100
    assert total(globex.secret_hash, project_ids=[tenants["a"].project_id]) == 0  # another organization's project
    assert total(admin_key, project_ids=[tenants["a2"].project_id, tenants["b"].project_id]) == 10
    assert total(OPERATOR_KEY) == 111
    assert total(OPERATOR_KEY, tenants["b"].organization_id) == 100
    with pytest.raises(openai.AuthenticationError):
        total(admin_key, tenants["b"].organization_id)  # an admin key's header must name its own organization

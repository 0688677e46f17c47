"""Spend limits and spend alerts through the real openai SDK, on both backends.

A project at or over its monthly limit gets 429 `insufficient_quota` on completions and job creation, the
others are unaffected; a crossed alert writes one `spend_alert.triggered` delivery per subscribed endpoint,
once a month. Bodies validate against OpenAI's spend-limit and spend-alert operations.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from fixtures.app import BASE_URL, OPERATOR_KEY, make_key
from fixtures.contract import validate_error, validate_operation
from fixtures.metering import priced_settings, store_usage
from fixtures.training import TINY
from fixtures.webhooks import deliveries, make_endpoint

from tunewright.api.app import create_app
from tunewright.api.spend import quota
from tunewright.storage.outbox import SPEND_ALERT_EVENT

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
HELLO = [{"role": "user", "content": "Say hello."}]
PRICES = {TINY: {"input": 0.10, "output": 0.40, "training": 3.00}}
MILLION_PROMPT_CENTS = 10  # 1M prompt tokens at $0.10 per 1M
CHANNEL = {"type": "email", "recipients": ["finance@example.com"]}


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Any:
    return priced_settings(request, tmp_path, backend, tiny_dir, PRICES)


@pytest.fixture
def app(settings: Any, stores: Any) -> Any:
    """The API without its webhook sender: the tests read the outbox."""
    return create_app(settings, stores, sweep=False, send_webhooks=False)


@pytest.fixture
def admin_key(stores: Any, tenants: Any) -> str:
    """An admin key of organization `acme` (projects `a` and `a2`)."""
    return make_key(stores, organization_id=tenants["a"].organization_id, project_id=None, kind="admin").secret_hash


def admin(http: Any, key: str, organization: str | None = None) -> Any:
    client = openai.OpenAI(
        base_url=BASE_URL, admin_api_key=key, organization=organization, http_client=http, max_retries=0
    )
    return client.admin.organization


def spend(stores: Any, tenant: Any, prompt_tokens: int) -> None:
    """Usage of `prompt_tokens` prompt tokens now, as the API records a chat request."""
    store_usage(stores, tenant, int(time.time()), prompt_tokens, 0)


def set_limit(http: Any, key: str, project_id: str, cents: int) -> Any:
    return admin(http, key).projects.spend_limit.update(
        project_id, threshold_amount=cents, currency="USD", interval="month"
    )


def set_organization_limit(http: Any, key: str, cents: int, organization: str | None = None) -> Any:
    return admin(http, key, organization).spend_limit.update(threshold_amount=cents, currency="USD", interval="month")


def quota_message(err: pytest.ExceptionInfo[openai.RateLimitError]) -> str:
    assert err.value.code == "insufficient_quota"
    assert err.value.response.headers["x-should-retry"] == "false"
    validate_error(err.value.response.json())
    return err.value.response.json()["error"]["message"]


# --- the limit ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["project", "organization"])
def test_a_spend_limit_is_created_read_replaced_and_deleted_as_openai_shapes_it(http, tenants, admin_key, scope):
    project = tenants["a"].project_id
    projects, organization = admin(http, admin_key).projects.spend_limit, admin(http, admin_key).spend_limit
    if scope == "project":
        limits, args, path = projects, (project,), f"/v1/organization/projects/{project}/spend_limit"
        other, other_args = organization, ()
    else:
        limits, args, path = organization, (), "/v1/organization/spend_limit"
        other, other_args = projects, (project,)
    with pytest.raises(openai.NotFoundError) as err:
        limits.retrieve(*args)
    assert err.value.code == "spend_limit_not_found"
    created = limits.update(*args, threshold_amount=500, currency="USD", interval="month")
    assert (created.object, created.threshold_amount, created.currency, created.interval) == (
        f"{scope}.spend_limit",
        500,
        "USD",
        "month",
    )
    assert created.enforcement.status == "inactive"
    assert limits.update(*args, threshold_amount=700, currency="USD", interval="month").threshold_amount == 700
    assert limits.retrieve(*args).threshold_amount == 700
    with pytest.raises(openai.NotFoundError):  # a project's limit is not its organization's, nor the other way
        other.retrieve(*other_args)
    headers = {"Authorization": f"Bearer {admin_key}"}
    body = {"threshold_amount": 900, "currency": "USD", "interval": "month"}
    validate_operation(http.post(path, json=body, headers=headers).json(), f"Update{scope}spendlimit")
    validate_operation(http.get(path, headers=headers).json(), f"Get{scope}spendlimit")
    deleted = http.delete(path, headers=headers)
    assert deleted.status_code == 200
    validate_operation(deleted.json(), f"Delete{scope}spendlimit")
    assert deleted.json() == {"object": f"{scope}.spend_limit.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError) as err:
        limits.retrieve(*args)
    assert err.value.code == "spend_limit_not_found"
    with pytest.raises(openai.NotFoundError):
        limits.delete(*args)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"threshold_amount": 0, "currency": "USD", "interval": "month"}, "threshold_amount", "invalid_value"),
        ({"threshold_amount": 5, "currency": "EUR", "interval": "month"}, "currency", "invalid_value"),
        ({"threshold_amount": 5, "currency": "USD", "interval": "day"}, "interval", "invalid_value"),
        ({"threshold_amount": 5, "currency": "USD"}, "interval", "missing_required_parameter"),
        ({"threshold_amount": 5, "currency": "USD", "interval": "month", "x": 1}, "x", "unknown_parameter"),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_a_bad_limit_is_400_naming_the_field(http, tenants, admin_key, body, param, code):
    for path in (f"/v1/organization/projects/{tenants['a'].project_id}/spend_limit", "/v1/organization/spend_limit"):
        response = http.post(path, json=body, headers={"Authorization": f"Bearer {admin_key}"})
        assert response.status_code == 400, response.text
        validate_error(response.json())
        assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (param, code)


def test_a_project_at_its_limit_gets_insufficient_quota_and_others_do_not(http, sdk, stores, tenants, admin_key):
    a, a2, b = tenants["a"], tenants["a2"], tenants["b"]
    set_limit(http, admin_key, a.project_id, MILLION_PROMPT_CENTS)
    set_limit(http, admin_key, a2.project_id, MILLION_PROMPT_CENTS)
    client = sdk(a.key)
    assert client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2).usage.prompt_tokens > 0
    spend(stores, a, 1_000_000 - 1)  # with the request above: just over 10 cents
    assert admin(http, admin_key).projects.spend_limit.retrieve(a.project_id).enforcement.status == "enforcing"

    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2)
    assert err.value.code == "insufficient_quota"
    assert err.value.type == "insufficient_quota"
    assert err.value.response.headers["x-should-retry"] == "false"
    validate_error(err.value.response.json())
    message = err.value.response.json()["error"]["message"]
    assert message.startswith("You exceeded your current quota, please check your plan and billing details.")
    with pytest.raises(openai.RateLimitError) as err:
        client.completions.create(model=TINY, prompt="Hi", max_tokens=2)
    assert err.value.code == "insufficient_quota"
    upload = client.files.create(file=("t.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune")
    with pytest.raises(openai.RateLimitError) as err:
        client.fine_tuning.jobs.create(model=TINY, training_file=upload.id)
    assert err.value.code == "insufficient_quota"
    assert err.value.response.headers["x-should-retry"] == "false"
    scraped = http.get("/metrics").text
    assert 'tunewright_quota_rejections_total{kind="inference"} 2.0' in scraped
    assert 'tunewright_quota_rejections_total{kind="job"} 1.0' in scraped

    for other in (a2, b):  # a project under its limit, a project without one
        assert sdk(other.key).chat.completions.create(model=TINY, messages=HELLO, max_tokens=2).choices

    set_limit(http, admin_key, a.project_id, MILLION_PROMPT_CENTS + 1)  # raised: admitted again at once
    assert client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2).choices


def test_the_standing_is_cached_for_spend_cache_s(stores, settings, tenants, http, admin_key):
    a = tenants["a"]
    set_limit(http, admin_key, a.project_id, MILLION_PROMPT_CENTS)
    slow = type(settings)(**{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "spend_cache_s": 60})
    first = quota.standing(stores, slow, organization_id=a.organization_id, project_id=a.project_id)
    spend(stores, a, 2_000_000)
    assert quota.standing(stores, slow, organization_id=a.organization_id, project_id=a.project_id) is first
    assert quota.standing(
        stores, slow, organization_id=a.organization_id, project_id=a.project_id, cached=False
    ).reached
    quota.CACHE.forget(a.project_id)

    set_organization_limit(http, admin_key, 3 * MILLION_PROMPT_CENTS)  # the organization's standing, likewise
    first = quota.organization_standing(stores, slow, organization_id=a.organization_id)
    assert not first.reached
    spend(stores, tenants["a2"], 2_000_000)
    assert quota.organization_standing(stores, slow, organization_id=a.organization_id) is first
    assert quota.organization_standing(stores, slow, organization_id=a.organization_id, cached=False).reached
    quota.CACHE.forget(a.organization_id)


# --- the organization's limit ---------------------------------------------------------------------------


def test_an_organization_at_its_limit_stops_every_project_of_it_and_no_other(http, sdk, stores, tenants, admin_key):
    a, a2, b = tenants["a"], tenants["a2"], tenants["b"]
    organization = admin(http, admin_key)
    upload = sdk(a.key).files.create(file=("t.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune")
    job = {"model": TINY, "training_file": upload.id, "hyperparameters": {"n_epochs": 20}}
    cost_cents = (
        sdk(a.key).post("/fine_tuning/jobs/estimate", body=job, cast_to=object)["estimated_cost"]["value"] * 100
    )
    assert cost_cents > 2
    set_organization_limit(http, admin_key, math.floor(cost_cents))  # less than the job would cost
    estimated = sdk(a.key).post("/fine_tuning/jobs/estimate", body=job, cast_to=object)
    assert estimated["within_spend_limit"] is False
    with pytest.raises(openai.RateLimitError) as err:
        sdk(a.key).fine_tuning.jobs.create(**job)
    assert "estimated cost" in quota_message(err)
    assert f"Organization {a.organization_id} has spent" in quota_message(err)

    set_organization_limit(http, admin_key, MILLION_PROMPT_CENTS)
    set_limit(http, admin_key, a.project_id, 100 * MILLION_PROMPT_CENTS)  # a's own limit, far from reached
    spend(stores, a, 600_000)  # 6 cents, and 4 in a2: neither project alone is near 10 cents...
    assert sdk(a2.key).chat.completions.create(model=TINY, messages=HELLO, max_tokens=2).choices
    spend(stores, a2, 400_000)  # ...but together they have reached the organization's limit
    for tenant in (a, a2):
        client = sdk(tenant.key)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2)
        assert f"Organization {a.organization_id} has spent $0.10 of its monthly spend limit of $0.10." in (
            quota_message(err)
        )
        with pytest.raises(openai.RateLimitError) as err:
            client.completions.create(model=TINY, prompt="Hi", max_tokens=2)
        quota_message(err)
    with pytest.raises(openai.RateLimitError) as err:
        sdk(a.key).fine_tuning.jobs.create(**job)
    assert "estimated cost" not in quota_message(err)
    assert organization.spend_limit.retrieve().enforcement.status == "enforcing"
    assert organization.projects.spend_limit.retrieve(a.project_id).enforcement.status == "inactive"
    assert sdk(b.key).chat.completions.create(model=TINY, messages=HELLO, max_tokens=2).choices  # another org

    set_organization_limit(http, admin_key, 2 * MILLION_PROMPT_CENTS)  # raised: admitted again at once
    assert sdk(a.key).chat.completions.create(model=TINY, messages=HELLO, max_tokens=2).choices
    organization.spend_limit.delete()
    assert sdk(a2.key).chat.completions.create(model=TINY, messages=HELLO, max_tokens=2).choices


# --- alerts ---------------------------------------------------------------------------------------------


def test_alerts_are_created_listed_replaced_and_deleted(http, tenants, admin_key):
    project = tenants["a"].project_id
    alerts = admin(http, admin_key).projects.spend_alerts
    made = [
        alerts.create(project, threshold_amount=cents, currency="USD", interval="month", notification_channel=CHANNEL)
        for cents in (100, 200, 300)
    ]
    assert made[0].object == "project.spend_alert"
    assert made[0].notification_channel.recipients == ["finance@example.com"]
    assert [x.id for x in alerts.list(project)] == [x.id for x in made]
    page = alerts.list(project, limit=2, order="desc")
    assert [x.id for x in page.data] == [made[2].id, made[1].id]
    assert page.has_more
    assert [x.id for x in alerts.list(project, after=made[0].id)] == [made[1].id, made[2].id]
    replaced = alerts.update(
        made[1].id,
        project_id=project,
        threshold_amount=250,
        currency="USD",
        interval="month",
        notification_channel=CHANNEL,
    )
    assert alerts.retrieve(made[1].id, project_id=project).threshold_amount == replaced.threshold_amount == 250
    assert alerts.delete(made[0].id, project_id=project).deleted
    headers = {"Authorization": f"Bearer {admin_key}"}
    raw = http.get(f"/v1/organization/projects/{project}/spend_alerts", headers=headers)
    validate_operation(raw.json(), "list-project-spend-alerts")
    body = {"threshold_amount": 5, "currency": "USD", "interval": "month", "notification_channel": CHANNEL}
    path = f"/v1/organization/projects/{project}/spend_alerts"
    made_raw = http.post(path, json=body, headers=headers).json()
    validate_operation(made_raw, "create-project-spend-alert")
    validate_operation(http.get(f"{path}/{made_raw['id']}", headers=headers).json(), "retrieve-project-spend-alert")
    updated = http.post(f"{path}/{made_raw['id']}", json={**body, "threshold_amount": 6}, headers=headers).json()
    validate_operation(updated, "update-project-spend-alert")
    validate_operation(http.delete(f"{path}/{made_raw['id']}", headers=headers).json(), "delete-project-spend-alert")
    limit_raw = http.post(
        f"/v1/organization/projects/{project}/spend_limit",
        json={"threshold_amount": 9, "currency": "USD", "interval": "month"},
        headers=headers,
    )
    validate_operation(limit_raw.json(), "Updateprojectspendlimit")
    org = admin(http, admin_key).spend_alerts
    own = org.create(threshold_amount=1, currency="USD", interval="month", notification_channel=CHANNEL)
    assert own.object == "organization.spend_alert"
    assert [x.id for x in org.list()] == [own.id]  # project alerts are not the organization's
    raw = http.get("/v1/organization/spend_alerts", headers=headers)
    validate_operation(raw.json(), "list-organization-spend-alerts")
    deleted = http.delete(f"/v1/organization/spend_alerts/{own.id}", headers=headers)
    validate_operation(deleted.json(), "delete-organization-spend-alert")


def test_a_crossed_alert_writes_one_webhook_delivery_a_month(http, sdk, stores, tenants, admin_key):
    a, a2 = tenants["a"], tenants["a2"]
    hooks_a = make_endpoint(stores.metadata, a.project_id, [SPEND_ALERT_EVENT])
    jobs_only = make_endpoint(stores.metadata, a.project_id, ["fine_tuning.job.succeeded"])
    hooks_a2 = make_endpoint(stores.metadata, a2.project_id, [SPEND_ALERT_EVENT])
    alert = admin(http, admin_key).projects.spend_alerts.create(
        a.project_id,
        threshold_amount=MILLION_PROMPT_CENTS,
        currency="USD",
        interval="month",
        notification_channel=CHANNEL,
    )
    client = sdk(a.key)
    client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2)
    assert deliveries(stores.metadata, hooks_a, a.project_id) == []  # not crossed yet
    spend(stores, a, 1_000_000)
    for _ in range(2):
        client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2)  # no limit: still served
    (delivery,) = deliveries(stores.metadata, hooks_a, a.project_id)
    assert delivery.event_type == SPEND_ALERT_EVENT
    body = json.loads(delivery.payload)
    assert body["type"] == SPEND_ALERT_EVENT
    assert body["object"] == "event"
    assert body["data"]["id"] == alert.id
    assert body["data"]["object"] == "project.spend_alert"
    assert body["data"]["month_to_date_amount"] >= MILLION_PROMPT_CENTS
    assert deliveries(stores.metadata, jobs_only, a.project_id) == []  # not subscribed
    assert deliveries(stores.metadata, hooks_a2, a2.project_id) == []  # another project's alert

    # The organization's alert counts every project's spend and goes to every project's endpoints.
    admin(http, admin_key).spend_alerts.create(
        threshold_amount=MILLION_PROMPT_CENTS * 2, currency="USD", interval="month", notification_channel=CHANNEL
    )
    spend(stores, a2, 1_000_000)
    assert quota.check_all_alerts(stores, http.app.state.settings) == 1  # the sweeper's pass, without requests
    assert quota.check_all_alerts(stores, http.app.state.settings) == 0
    assert len(deliveries(stores.metadata, hooks_a, a.project_id)) == 2
    (org_delivery,) = deliveries(stores.metadata, hooks_a2, a2.project_id)
    assert json.loads(org_delivery.payload)["data"]["object"] == "organization.spend_alert"


# --- tenancy --------------------------------------------------------------------------------------------


def test_another_organizations_admin_key_finds_nothing_and_project_keys_are_refused(http, stores, tenants, admin_key):
    a = tenants["a"]
    globex = make_key(stores, organization_id=tenants["b"].organization_id, project_id=None, kind="admin").secret_hash
    set_limit(http, admin_key, a.project_id, 100)
    alert = admin(http, admin_key).projects.spend_alerts.create(
        a.project_id, threshold_amount=1, currency="USD", interval="month", notification_channel=CHANNEL
    )
    own = admin(http, admin_key).spend_alerts.create(
        threshold_amount=1, currency="USD", interval="month", notification_channel=CHANNEL
    )
    other = admin(http, globex)
    with pytest.raises(openai.NotFoundError) as err:
        other.projects.spend_limit.retrieve(a.project_id)
    assert err.value.code == "project_not_found"
    with pytest.raises(openai.NotFoundError):
        set_limit(http, globex, a.project_id, 1)
    with pytest.raises(openai.NotFoundError):
        other.projects.spend_alerts.list(a.project_id)
    with pytest.raises(openai.NotFoundError) as err:
        other.spend_alerts.retrieve(own.id)
    assert err.value.code == "spend_alert_not_found"
    with pytest.raises(openai.NotFoundError):
        other.spend_alerts.delete(alert.id)  # a project alert is not an organization alert
    with pytest.raises(openai.NotFoundError):
        admin(http, admin_key).projects.spend_alerts.retrieve(alert.id, project_id=tenants["a2"].project_id)
    for key in (a.key, tenants["b"].key):
        with pytest.raises(openai.PermissionDeniedError) as err:
            admin(http, key).projects.spend_limit.retrieve(a.project_id)
        assert err.value.code == "insufficient_permissions"
        with pytest.raises(openai.PermissionDeniedError):
            admin(http, key).spend_alerts.list()
    assert admin(http, OPERATOR_KEY).projects.spend_limit.retrieve(a.project_id).threshold_amount == 100
    with pytest.raises(openai.BadRequestError) as err:
        admin(http, OPERATOR_KEY).spend_alerts.list()  # the organization's own alerts need the header
    assert err.value.param == "OpenAI-Organization"
    assert [x.id for x in admin(http, OPERATOR_KEY, a.organization_id).spend_alerts.list()] == [own.id]

    set_organization_limit(http, admin_key, 300)
    with pytest.raises(openai.NotFoundError):  # globex's own limit: it has none; acme's is not its
        other.spend_limit.retrieve()
    set_organization_limit(http, globex, 5)
    assert admin(http, admin_key).spend_limit.retrieve().threshold_amount == 300
    for key in (a.key, tenants["b"].key):
        with pytest.raises(openai.PermissionDeniedError):
            set_organization_limit(http, key, 1)
    with pytest.raises(openai.BadRequestError) as err:
        admin(http, OPERATOR_KEY).spend_limit.retrieve()  # which organization: the header says
    assert err.value.param == "OpenAI-Organization"
    assert set_organization_limit(http, OPERATOR_KEY, 400, a.organization_id).threshold_amount == 400
    assert admin(http, globex).spend_limit.retrieve().threshold_amount == 5

"""/v1/organization/audit_logs through the real openai SDK: what each change records, filters, pages, tenancy.

Bodies are validated against OpenAI's `list-audit-logs` response schema; the webhook endpoint types are
Tunewright's own (`DEVIATION_AUDIT_TYPES`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import openai
import pytest
from fixtures.app import OPERATOR_KEY, Tenant, make_key
from fixtures.contract import DEVIATION_AUDIT_TYPES, validate_error, validate_operation
from fixtures.models import SMOLLM2, make_model

if TYPE_CHECKING:
    from collections.abc import Callable

    from litestar.testing import TestClient

    from tunewright.storage.base import Stores

pytestmark = pytest.mark.integration

OPERATOR_USER = {"id": "user-operator", "email": "operator@tunewright.invalid"}
FT_EVENTS = ["fine_tuning.job.succeeded"]


@pytest.fixture
def admin_key(stores: Stores, tenants: dict[str, Tenant]) -> str:
    """The secret of an admin key of organization `acme` (tenants `a` and `a2`)."""
    return make_key(stores, organization_id=tenants["a"].organization_id, project_id=None, kind="admin").secret_hash


@pytest.fixture
def admin(admin_client: Callable[..., openai.OpenAI], admin_key: str) -> Any:
    """`client.admin.organization` with acme's admin key."""
    return admin_client(admin_key).admin.organization


def key_id(stores: Stores, secret: str) -> str:
    from tunewright.storage.api_keys import hash_secret

    found = stores.metadata.find_api_key(hash_secret(secret))
    assert found is not None
    return found.id


def listed(http: TestClient[Any], key: str, **params: Any) -> list[dict[str, Any]]:
    """The raw entries of one page, after checking the body against OpenAI's schema."""
    response = http.get("/v1/organization/audit_logs", params=params, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    body = response.json()
    validate_operation(body, "list-audit-logs", allow=(DEVIATION_AUDIT_TYPES,))
    return body["data"]


def test_each_admin_change_is_listed_with_the_admin_key_and_its_payload(admin, admin_key, http, stores, tenants):
    project = admin.projects.create(name="alpha")
    admin.projects.update(project.id, name="beta")
    account = admin.projects.service_accounts.create(project.id, name="bot")
    extra = make_key(stores, organization_id=project.organization_id, project_id=project.id)
    admin.projects.api_keys.delete(extra.id, project_id=project.id)
    admin.projects.service_accounts.delete(account.id, project_id=project.id)
    admin.projects.archive(project.id)

    me = key_id(stores, admin_key)
    entries = listed(http, admin_key, **{"actor_ids[]": me})
    assert [(e["type"], e[e["type"]]) for e in entries[::-1]] == [
        ("project.created", {"id": project.id, "data": {"name": "alpha", "title": "alpha"}}),
        ("project.updated", {"id": project.id, "changes_requested": {"title": "beta", "name": "beta"}}),
        ("service_account.created", {"id": account.id, "data": {"role": "member"}}),
        ("api_key.created", {"id": account.api_key.id}),
        ("api_key.deleted", {"id": extra.id}),
        ("service_account.deleted", {"id": account.id}),
        ("api_key.deleted", {"id": account.api_key.id}),
        ("project.archived", {"id": project.id}),
    ]
    actor = {"type": "api_key", "api_key": {"id": me, "type": "user", "user": OPERATOR_USER}}
    assert all(e["actor"] == actor for e in entries)
    assert entries[0]["project"] == {"id": project.id, "name": "beta"}
    assert entries[-1]["project"] == {"id": project.id, "name": "alpha"}

    sdk_entries = list(admin.audit_logs.list(actor_ids=[me]))  # the SDK's own types read them
    assert [e.id for e in sdk_entries] == [e["id"] for e in entries]
    assert sdk_entries[-1].project_created.data.name == "alpha"
    assert sdk_entries[0].actor.api_key.user.email == OPERATOR_USER["email"]


def test_project_and_service_account_keys_are_the_actors_of_their_changes(admin, admin_key, http, sdk, stores, tenants):
    a = tenants["a"]
    client = sdk(a.key)
    model = make_model(stores, a)
    granted = client.fine_tuning.checkpoints.permissions.create(model, project_ids=[tenants["a2"].project_id])
    client.fine_tuning.checkpoints.permissions.delete(granted.data[0].id, fine_tuned_model_checkpoint=model)
    hook = client.webhooks.create(name="ops", url="https://hooks.example.com/a", event_types=FT_EVENTS)
    client.webhooks.update(hook.id, name="renamed")
    client.webhooks.rotate_secret(hook.id, keep_old_secret_active_for_24_hours=True)
    client.webhooks.delete(hook.id)
    account = admin.projects.service_accounts.create(a.project_id, name="bot")
    robot_hook = sdk(account.api_key.value).webhooks.create(
        name="bot", url="https://hooks.example.com/b", event_types=FT_EVENTS
    )

    entries = listed(http, admin_key, **{"project_ids[]": a.project_id, "effective_at[gte]": 0})
    by_key = [e for e in entries[::-1] if e["actor"] and e["actor"]["api_key"]["id"] == a.key_id]
    assert [(e["type"], e[e["type"]]) for e in by_key] == [
        (
            "checkpoint.permission.created",
            {
                "id": granted.data[0].id,
                "data": {"project_id": tenants["a2"].project_id, "fine_tuned_model_checkpoint": model},
            },
        ),
        ("checkpoint.permission.deleted", {"id": granted.data[0].id}),
        (
            "webhook_endpoint.created",
            {"id": hook.id, "data": {"name": "ops", "url": "https://hooks.example.com/a", "event_types": FT_EVENTS}},
        ),
        ("webhook_endpoint.updated", {"id": hook.id, "changes_requested": {"name": "renamed"}}),
        ("webhook_endpoint.secret_rotated", {"id": hook.id, "data": {"keep_old_secret_active_for_24_hours": True}}),
        ("webhook_endpoint.deleted", {"id": hook.id}),
    ]
    assert {e["project"]["id"] for e in by_key} == {a.project_id}
    assert by_key[0]["actor"]["api_key"] == {"id": a.key_id, "type": "user", "user": OPERATOR_USER}
    newest = entries[0]
    assert (newest["type"], newest["webhook_endpoint.created"]["id"]) == ("webhook_endpoint.created", robot_hook.id)
    robot = {"id": account.api_key.id, "type": "service_account", "service_account": {"id": account.id}}
    assert newest["actor"] == {"type": "api_key", "api_key": robot}
    assert [e["id"] for e in listed(http, admin_key, **{"actor_ids[]": account.id})] == [newest["id"]]


def test_deleting_a_model_records_each_permission_dropped_with_it(admin_key, http, sdk, stores, tenants):
    a, a2 = tenants["a"], tenants["a2"]
    client = sdk(a.key)
    model = make_model(stores, a)
    checkpoint = make_model(stores, a, name=f"{model}:ckpt-step-1", kind="checkpoint")  # of the same job
    other = make_model(stores, a, name=f"ft:{SMOLLM2}:acme:other:Zz9yXw8v", job="ftjob-other")
    grants = [
        client.fine_tuning.checkpoints.permissions.create(name, project_ids=[a2.project_id]).data[0].id
        for name in (model, checkpoint, other)
    ]

    assert client.models.delete(model).deleted
    entries = listed(http, admin_key, **{"event_types[]": "checkpoint.permission.deleted"})
    assert sorted(e["checkpoint.permission.deleted"]["id"] for e in entries) == sorted(grants[:2])
    assert all(e["actor"]["api_key"]["id"] == a.key_id for e in entries)
    assert all(e["project"]["id"] == a.project_id for e in entries)
    kept = client.fine_tuning.checkpoints.permissions.list(other)
    assert [p.id for p in kept] == [grants[2]]  # another job's model keeps its permission

    assert client.models.delete(other).deleted
    found = listed(http, admin_key, **{"resource_ids[]": grants[2]})
    assert [e["type"] for e in found] == ["checkpoint.permission.deleted", "checkpoint.permission.created"]


def test_the_operator_key_is_a_documented_actor(admin_client, http, tenants):
    operator = admin_client(OPERATOR_KEY, tenants["b"].organization_id).admin.organization
    made = operator.projects.create(name="by the operator")
    [entry] = listed(http, OPERATOR_KEY, **{"resource_ids[]": made.id})
    assert entry["actor"] == {"type": "api_key", "api_key": {"id": "operator", "type": "user", "user": OPERATOR_USER}}
    assert [e.id for e in operator.audit_logs.list(actor_ids=["operator"])] == [entry["id"]]
    by_email = operator.audit_logs.list(actor_emails=[OPERATOR_USER["email"]], event_types=["project.created"])
    assert [e.id for e in by_email] == [entry["id"]]
    assert operator.audit_logs.list(actor_emails=["someone@example.com"]).data == []


def test_filters_narrow_and_pages_follow_the_cursors(admin, admin_key, http, stores, tenants):
    made = [admin.projects.create(name=f"p{i}") for i in range(5)]
    admin.projects.update(made[0].id, name="renamed")
    logs = admin.audit_logs

    created = logs.list(event_types=["project.created"], actor_ids=[key_id(stores, admin_key)], limit=2)
    assert [e.project_created.id for e in created] == [p.id for p in made[::-1]]  # auto-paging follows `last_id`
    first = created.data
    assert (len(first), created.has_more, created.last_id) == (2, True, first[-1].id)
    back = logs.list(before=logs.list(after=first[-1].id, event_types=["project.created"]).data[0].id, limit=2)
    assert [e.id for e in back.data] == [e.id for e in first]

    assert [e.type for e in logs.list(project_ids=[made[0].id])] == ["project.updated", "project.created"]
    assert [e.type for e in logs.list(resource_ids=[made[0].id], event_types=["project.updated"])] == [
        "project.updated"
    ]
    newest = logs.list(limit=1).data[0].effective_at
    assert logs.list(effective_at={"gt": newest}).data == []
    assert logs.list(effective_at={"lt": 0}).data == []
    assert len(logs.list(effective_at={"gte": newest, "lte": newest}).data) >= 1
    assert logs.list(event_types=["login.succeeded"]).data == []
    assert logs.list(tenant_only=True).data == []


def test_another_organization_sees_none_of_it_and_project_keys_are_refused(admin, admin_client, http, stores, tenants):
    project = admin.projects.create(name="acme's")
    globex_admin = make_key(stores, organization_id=tenants["b"].organization_id, project_id=None, kind="admin")
    theirs = admin_client(globex_admin.secret_hash).admin.organization.audit_logs
    seen = list(theirs.list(limit=100))
    assert {e.project.id for e in seen if e.project} <= {tenants["b"].project_id}
    assert theirs.list(resource_ids=[project.id]).data == []
    mine = admin.audit_logs.list(limit=1).data[0].id
    with pytest.raises(openai.BadRequestError) as err:
        theirs.list(after=mine)
    assert (err.value.param, err.value.code) == ("after", "invalid_value")
    with pytest.raises(openai.BadRequestError) as err:
        theirs.list(before=mine)
    assert err.value.param == "before"

    everyone = admin_client(OPERATOR_KEY).admin.organization.audit_logs.list(limit=100)
    assert {e.project.id for e in everyone.data if e.project} >= {project.id, tenants["b"].project_id}

    for key in (tenants["a"].key, tenants["b"].key):
        with pytest.raises(openai.PermissionDeniedError) as denied:
            admin_client(key).admin.organization.audit_logs.list()
        assert denied.value.code == "insufficient_permissions"
        validate_error(denied.value.response.json())


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"effective_at[after]": "1"}, "effective_at[after]", "unknown_parameter"),
        ({"effective_at[gt]": "yesterday"}, "effective_at[gt]", "invalid_type"),
        ({"limit": "0"}, "limit", "invalid_value"),
        ({"limit": "101"}, "limit", "invalid_value"),
        ({"after": "audit_log-x", "before": "audit_log-y"}, "before", "invalid_value"),
        ({"event_types[]": [f"t{i}" for i in range(101)]}, "event_types", "invalid_value"),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_bad_query_is_a_400_naming_it(http, admin_key, params, param, code):
    response = http.get("/v1/organization/audit_logs", params=params, headers={"Authorization": f"Bearer {admin_key}"})
    assert response.status_code == 400
    body = response.json()
    validate_error(body)
    assert (body["error"]["param"], body["error"]["code"]) == (param, code)


def test_a_rate_limit_change_is_listed_with_what_was_asked(admin, admin_key, http, stores, tenants):
    project_id = tenants["a"].project_id
    admin.projects.rate_limits.update_rate_limit("rl-tiny-llama", project_id=project_id, max_requests_per_1_minute=7)
    entries = listed(http, admin_key, **{"event_types[]": "rate_limit.updated"})
    assert [(e["type"], e["rate_limit.updated"], e["project"]["id"]) for e in entries] == [
        (
            "rate_limit.updated",
            {"id": "rl-tiny-llama", "changes_requested": {"max_requests_per_1_minute": 7}},
            project_id,
        )
    ]
    assert entries[0]["actor"]["api_key"]["id"] == key_id(stores, admin_key)
    (entry,) = admin.audit_logs.list(event_types=["rate_limit.updated"])
    assert entry.rate_limit_updated.changes_requested.max_requests_per_1_minute == 7


def test_spend_limit_and_alert_changes_are_listed_under_tunewrights_types(admin, admin_key, http, stores, tenants):
    project_id = tenants["a"].project_id
    admin.projects.spend_limit.update(project_id, threshold_amount=500, currency="USD", interval="month")
    admin.projects.spend_limit.delete(project_id)
    channel = {"type": "email", "recipients": ["ops@example.com"]}
    alert = admin.projects.spend_alerts.create(
        project_id, threshold_amount=100, currency="USD", interval="month", notification_channel=channel
    )
    admin.projects.spend_alerts.update(
        alert.id,
        project_id=project_id,
        threshold_amount=200,
        currency="USD",
        interval="month",
        notification_channel=channel,
    )
    admin.projects.spend_alerts.delete(alert.id, project_id=project_id)
    limit = {"threshold_amount": 500, "currency": "USD", "interval": "month"}
    entries = listed(http, admin_key, **{"project_ids[]": project_id, "actor_ids[]": key_id(stores, admin_key)})
    assert [(e["type"], e[e["type"]]) for e in entries[::-1]] == [
        ("spend_limit.updated", {"id": project_id, "changes_requested": limit}),
        ("spend_limit.deleted", {"id": project_id}),
        ("spend_alert.created", {"id": alert.id, "data": {**limit, "threshold_amount": 100}}),
        ("spend_alert.updated", {"id": alert.id, "data": {**limit, "threshold_amount": 200}}),
        ("spend_alert.deleted", {"id": alert.id}),
    ]
    assert all(e["project"]["id"] == project_id for e in entries)

    admin.spend_limit.update(threshold_amount=900, currency="USD", interval="month")  # the organization's own
    admin.spend_limit.delete()
    organization_id = tenants["a"].organization_id
    entries = listed(http, admin_key, **{"resource_ids[]": organization_id})
    assert [(e["type"], e[e["type"]]) for e in entries[::-1]] == [
        ("spend_limit.updated", {"id": organization_id, "changes_requested": {**limit, "threshold_amount": 900}}),
        ("spend_limit.deleted", {"id": organization_id}),
    ]
    assert all("project" not in e or e["project"] is None for e in entries)

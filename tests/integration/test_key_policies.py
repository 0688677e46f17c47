"""Key scopes and expiry, service-account updates and extra keys: the SDK's `api_keys.update`,
`service_accounts.update` and `service_accounts.api_keys.create`, and what they change on the project routes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from fixtures.app import BASE_URL
from fixtures.contract import validate_error, validate_operation, validate_sdk_type
from litestar.testing import TestClient
from openai.types.admin.organization.projects import ProjectAPIKey, ProjectServiceAccount
from openai.types.admin.organization.projects.service_accounts import APIKeyCreateResponse

pytestmark = pytest.mark.integration

AdminFactory = Callable[..., openai.OpenAI]


@pytest.fixture
def admin(acme_admin: openai.OpenAI) -> openai.OpenAI:
    """SDK client holding an admin key of organization `acme` (fixtures.app)."""
    return acme_admin


def client_of(http: TestClient[Any], key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=BASE_URL, api_key=key, http_client=http, max_retries=0)


def new_account_key(admin: openai.OpenAI, project_id: str, **kwargs: Any) -> Any:
    accounts = admin.admin.organization.projects.service_accounts
    account = accounts.create(project_id, name="bot")
    return account, accounts.api_keys.create(account.id, project_id=project_id, **kwargs)


def missing_scope(call: Callable[[], Any]) -> str:
    with pytest.raises(openai.AuthenticationError) as err:
        call()
    assert err.value.code == "missing_scope"
    validate_error(err.value.response.json())
    return err.value.message


def test_a_restricted_key_reaches_only_its_scopes(admin, http, tenants):
    project_id = tenants["a"].project_id
    _, created = new_account_key(admin, project_id, scopes=["api.files.write", "api.model.request"])
    client = client_of(http, created.value)
    uploaded = client.files.create(file=("a.jsonl", b'{"prompt": "a", "completion": "b"}\n'), purpose="fine-tune")
    assert client.files.retrieve(uploaded.id).id == uploaded.id  # write includes read
    assert "Missing scopes: api.model.read" in missing_scope(lambda: client.models.list())
    assert "api.fine_tuning.read" in missing_scope(lambda: client.fine_tuning.jobs.list())
    assert "api.fine_tuning.write" in missing_scope(
        lambda: client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
    )
    with pytest.raises(openai.NotFoundError):  # past the scope check: the model is what is missing
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])

    reader = client_of(http, new_account_key(admin, project_id, scopes=["api.all.read"])[1].value)
    assert [f.id for f in reader.files.list()] == [uploaded.id]
    reader.fine_tuning.jobs.list()
    reader.models.list()
    reader.webhooks.list()
    missing_scope(lambda: reader.files.delete(uploaded.id))
    missing_scope(lambda: reader.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}]))
    estimator = client_of(http, new_account_key(admin, project_id, scopes=["api.fine_tuning.read"])[1].value)
    with pytest.raises(openai.APIStatusError) as err:  # the estimate is a read: refused for its body, not scope
        estimator.post(
            "/fine_tuning/jobs/estimate", body={"model": "tiny", "training_file": "file-nope"}, cast_to=object
        )
    assert (err.value.status_code, err.value.code) in ((400, "model_not_found"), (404, "file_not_found")), err.value


def test_scopes_are_replaced_at_once_and_audited(admin, http, tenants):
    project_id, key_id = tenants["a"].project_id, tenants["a"].key_id
    keys = admin.admin.organization.projects.api_keys
    client = client_of(http, tenants["a"].key)
    client.models.list()

    raw = keys.with_raw_response.update(key_id, project_id=project_id, scopes=["api.files.read", "api.files.read"])
    updated, body = raw.parse(), raw.http_response.json()
    validate_sdk_type({k: v for k, v in body.items() if k != "scopes"}, ProjectAPIKey)
    validate_operation(body, "retrieve-project-api-key")
    assert (updated.id, updated.scopes, updated.expires_at) == (key_id, ["api.files.read"], None)
    client.files.list()
    missing_scope(lambda: client.models.list())  # this process dropped its cached key with the change
    assert keys.retrieve(key_id, project_id=project_id).scopes == ["api.files.read"]

    assert keys.update(key_id, project_id=project_id, scopes=[]).scopes == []  # all permissions again
    client.models.list()

    (entry, *_) = admin.admin.organization.audit_logs.list(event_types=["api_key.updated"]).data
    assert entry.type == "api_key.updated"
    assert entry.api_key_updated is not None
    assert (entry.api_key_updated.id, entry.api_key_updated.changes_requested.scopes) == (key_id, [])


def test_bad_updates_are_400_naming_the_field(admin, tenants):
    project_id, key_id = tenants["a"].project_id, tenants["a"].key_id
    keys = admin.admin.organization.projects.api_keys
    cases = [
        ({}, "scopes", "missing_required_parameter"),
        ({"scopes": ["api.everything"]}, "scopes", "invalid_value"),
        ({"scopes": None}, "scopes", None),
        ({"expires_in_seconds": None}, "expires_in_seconds", None),
        ({"expires_in_seconds": 0}, "expires_in_seconds", "invalid_value"),
        ({"expires_in_seconds": "soon"}, "expires_in_seconds", None),
    ]
    for body, param, code in cases:
        with pytest.raises(openai.BadRequestError) as err:
            keys.update(key_id, project_id=project_id, extra_body=body)
        assert err.value.param == param, body
        if code is not None:
            assert err.value.code == code, body
        validate_error(err.value.response.json())
    with pytest.raises(openai.NotFoundError) as err:
        keys.update("key_nope", project_id=project_id, scopes=[])
    assert err.value.code == "api_key_not_found"


def test_an_expired_key_is_refused_and_cannot_be_updated(admin, http, tenants):
    project_id = tenants["a"].project_id
    keys = admin.admin.organization.projects.api_keys
    _, created = new_account_key(admin, project_id, expires_in_seconds=3600)
    assert created.expires_at is not None and created.expires_at - time.time() > 3500
    client = client_of(http, created.value)
    client.files.list()

    updated = keys.update(created.id, project_id=project_id, expires_in_seconds=1)
    assert updated.expires_at is not None and updated.expires_at <= time.time() + 1
    time.sleep(max(0.0, updated.expires_at - time.time()) + 0.1)
    with pytest.raises(openai.AuthenticationError) as err:
        client.files.list()
    assert err.value.code == "api_key_expired"
    assert "expired" in err.value.message
    listed = keys.retrieve(created.id, project_id=project_id)  # still listed, with its expiry
    assert listed.expires_at == updated.expires_at
    with pytest.raises(openai.BadRequestError) as err:
        keys.update(created.id, project_id=project_id, expires_in_seconds=3600)
    assert (err.value.code, err.value.param) == ("api_key_expired", "api_key_id")


def test_service_account_keys_are_added_with_their_own_name_scopes_and_expiry(admin, http, tenants):
    project_id = tenants["a"].project_id
    accounts = admin.admin.organization.projects.service_accounts
    account = accounts.create(project_id, name="bot")
    raw = accounts.api_keys.with_raw_response.create(
        account.id, project_id=project_id, name="deploy", scopes=["api.model.read"]
    )
    first = raw.parse()
    validate_sdk_type(raw.http_response.json(), APIKeyCreateResponse)
    assert (first.object, first.name, first.expires_at) == (
        "organization.project.service_account.api_key",
        "deploy",
        None,
    )
    second = accounts.api_keys.create(account.id, project_id=project_id)
    assert second.name == "Secret Key" and second.value != first.value
    client_of(http, first.value).models.list()
    client_of(http, second.value).files.list()  # unrestricted
    listed = admin.admin.organization.projects.api_keys.list(project_id)
    mine = {k.id: k for k in listed if k.owner.service_account and k.owner.service_account.id == account.id}
    assert account.api_key is not None
    assert set(mine) == {account.api_key.id, first.id, second.id}  # the account's first key and the two added
    assert mine[first.id].scopes == ["api.model.read"]

    newest, older, *_ = admin.admin.organization.audit_logs.list(event_types=["api_key.created"]).data
    assert newest.api_key_created is not None and older.api_key_created is not None
    assert (newest.api_key_created.id, newest.api_key_created.data) == (second.id, None)  # unrestricted
    assert older.api_key_created.id == first.id
    assert older.api_key_created.data is not None and older.api_key_created.data.scopes == ["api.model.read"]

    with pytest.raises(openai.NotFoundError) as err:
        accounts.api_keys.create("svc_acct_nope", project_id=project_id)
    assert err.value.code == "service_account_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        accounts.api_keys.create(account.id, project_id=project_id, scopes=["admin"])
    assert err.value.param == "scopes"
    with pytest.raises(openai.BadRequestError) as err:
        accounts.api_keys.create(account.id, project_id=project_id, name=" ")
    assert err.value.param == "name"
    never = accounts.api_keys.create(account.id, project_id=project_id, expires_in_seconds=None)
    assert never.expires_at is None


def test_an_account_without_a_role_has_keys_that_work_only_once_it_has_one(admin, http, tenants):
    project_id = tenants["a"].project_id
    accounts = admin.admin.organization.projects.service_accounts
    raw = accounts.with_raw_response.create(project_id, name="bare", create_service_account_only=True)
    bare = raw.parse()
    assert (bare.role, bare.api_key) == ("none", None)
    validate_operation(raw.http_response.json(), "create-project-service-account")
    key = accounts.api_keys.create(bare.id, project_id=project_id)
    client = client_of(http, key.value)
    with pytest.raises(openai.AuthenticationError) as err:
        client.files.list()
    assert "no role" in err.value.message
    keys = admin.admin.organization.projects.api_keys
    assert keys.retrieve(key.id, project_id=project_id).owner_project_access == "inactive"
    inactive = keys.list(project_id, owner_project_access="inactive", limit=1)
    assert [k.id for k in inactive.data] == [key.id]

    raw = accounts.with_raw_response.update(bare.id, project_id=project_id, role="member", name="bot")
    updated = raw.parse()
    validate_sdk_type(raw.http_response.json(), ProjectServiceAccount)
    validate_operation(raw.http_response.json(), "update-project-service-account")
    assert (updated.name, updated.role) == ("bot", "member")
    client.files.list()
    assert keys.retrieve(key.id, project_id=project_id).owner_project_access == "active"
    assert accounts.update(bare.id, project_id=project_id, role="owner").role == "owner"
    assert accounts.retrieve(bare.id, project_id=project_id).name == "bot"

    (entry, *_) = admin.admin.organization.audit_logs.list(event_types=["service_account.updated"]).data
    assert entry.service_account_updated is not None
    assert entry.service_account_updated.id == bare.id
    assert entry.service_account_updated.changes_requested.role == "owner"

    for body, param in (({"role": "none"}, "role"), ({"name": ""}, "name"), ({"bogus": 1}, "bogus")):
        with pytest.raises(openai.BadRequestError) as err:
            accounts.update(bare.id, project_id=project_id, extra_body=body)
        assert err.value.param == param


def test_the_new_routes_refuse_other_tenants(admin, admin_client, http, tenants):
    project_id, foreign = tenants["a"].project_id, tenants["b"].project_id
    foreign_account = admin_client(tenants["b"].key)  # a project key on admin routes
    projects = foreign_account.admin.organization.projects
    account, key = new_account_key(admin, project_id)
    with pytest.raises(openai.PermissionDeniedError):
        projects.api_keys.update(key.id, project_id=project_id, scopes=[])
    with pytest.raises(openai.PermissionDeniedError):
        projects.service_accounts.update(account.id, project_id=project_id, name="mine")
    with pytest.raises(openai.PermissionDeniedError):
        projects.service_accounts.api_keys.create(account.id, project_id=project_id)
    ours = admin.admin.organization.projects
    for call in (
        lambda: ours.api_keys.update(tenants["b"].key_id, project_id=foreign, scopes=[]),
        lambda: ours.service_accounts.update(account.id, project_id=foreign, name="x"),
        lambda: ours.service_accounts.api_keys.create(account.id, project_id=foreign),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.code == "project_not_found"
    sibling = tenants["a2"].project_id  # same organization, another project: the account is not there
    with pytest.raises(openai.NotFoundError):
        ours.service_accounts.api_keys.create(account.id, project_id=sibling)
    with pytest.raises(openai.NotFoundError):
        ours.api_keys.update(key.id, project_id=sibling, scopes=[])


def test_archived_projects_take_no_new_keys_or_account_changes(admin, tenants):
    project_id = tenants["a"].project_id
    account, _ = new_account_key(admin, project_id)
    admin.admin.organization.projects.archive(project_id)
    accounts = admin.admin.organization.projects.service_accounts
    for call in (
        lambda: accounts.api_keys.create(account.id, project_id=project_id),
        lambda: accounts.update(account.id, project_id=project_id, name="late"),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            call()
        assert err.value.code == "project_archived"

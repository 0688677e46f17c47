"""/v1/organization/projects (projects, project keys, service accounts) through the real openai SDK.

Wire shapes are checked by their exact key sets, taken from OpenAI's `Project`, `ProjectApiKey`,
`ProjectServiceAccount*` schemas, and project bodies against the contract copy under tests/contract/.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from fixtures.app import BASE_URL, OPERATOR_KEY, Tenant, make_key
from fixtures.contract import validate_error, validate_operation
from litestar.testing import TestClient

from tunewright.storage.base import Stores

pytestmark = pytest.mark.integration

# OpenAI's `Project` fields plus `organization_id` and `max_running_jobs`, additive extensions
# (docs/openai-compatibility.md).
PROJECT_KEYS = {
    "id",
    "object",
    "name",
    "created_at",
    "archived_at",
    "status",
    "external_key_id",
    "organization_id",
    "max_running_jobs",
}
LIST_KEYS = {"object", "data", "first_id", "last_id", "has_more"}
API_KEY_KEYS = {
    "object",
    "redacted_value",
    "name",
    "created_at",
    "last_used_at",
    "id",
    "owner_project_access",
    "owner",
    "expires_at",
    "scopes",  # an extension (docs/openai-compatibility.md)
}
SERVICE_ACCOUNT_KEYS = {"object", "id", "name", "role", "created_at"}

AdminFactory = Callable[..., openai.OpenAI]


@pytest.fixture
def admin_key(stores: Stores, tenants: dict[str, Tenant]) -> str:
    """The secret of an admin key of organization `acme` (tenants `a` and `a2`)."""
    return make_key(stores, organization_id=tenants["a"].organization_id, project_id=None, kind="admin").secret_hash


@pytest.fixture
def admin(admin_client: AdminFactory, admin_key: str) -> openai.OpenAI:
    """SDK client holding acme's admin key."""
    return admin_client(admin_key)


def raw(http: TestClient[Any], key: str, method: str, path: str, **kwargs: Any) -> Any:
    response = http.request(method, f"/v1{path}", headers={"Authorization": f"Bearer {key}"}, **kwargs)
    return response.status_code, response.json()


def project_client(http: TestClient[Any], key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=BASE_URL, api_key=key, http_client=http, max_retries=0)


def test_project_create_list_retrieve_modify_archive(admin, tenants):
    projects = admin.admin.organization.projects
    made = [projects.create(name=f"p{i}") for i in range(3)]
    assert made[0].id.startswith("proj_")
    assert (made[0].object, made[0].status, made[0].archived_at) == ("organization.project", "active", None)

    everything = [p.id for p in projects.list(limit=2)]  # auto-paging follows `last_id`
    assert everything == [p.id for p in projects.list(limit=100).data]
    assert set(everything) == {tenants["a"].project_id, tenants["a2"].project_id, *(p.id for p in made)}
    first = projects.list(limit=2)
    assert (first.has_more, first.last_id) == (True, everything[1])

    assert projects.retrieve(made[1].id).name == "p1"
    renamed = projects.update(made[1].id, name="renamed", external_key_id="ext-1")
    assert (renamed.name, renamed.external_key_id) == ("renamed", "ext-1")
    assert projects.update(made[1].id, external_key_id=None).external_key_id is None

    archived = projects.archive(made[2].id)
    assert archived.status == "archived"
    assert archived.archived_at is not None
    assert projects.archive(made[2].id).archived_at == archived.archived_at
    assert made[2].id not in [p.id for p in projects.list()]
    assert made[2].id in [p.id for p in projects.list(include_archived=True)]
    with pytest.raises(openai.BadRequestError) as err:
        projects.update(made[2].id, name="again")
    assert (err.value.code, err.value.param) == ("project_archived", "project_id")


def test_project_bodies_mirror_openai_schemas(http, admin_key):
    status, created = raw(http, admin_key, "POST", "/organization/projects", json={"name": "shape"})
    assert status == 200
    assert set(created) == PROJECT_KEYS  # nullable fields sent as null; `residency` (optional) left out
    assert created["external_key_id"] is None
    validate_operation(created, "create-project")
    status, listed = raw(http, admin_key, "GET", "/organization/projects", params={"limit": 1})
    assert status == 200
    validate_operation(listed, "list-projects")
    assert set(listed) == LIST_KEYS
    assert listed["object"] == "list"
    assert listed["has_more"] is True
    assert listed["first_id"] == listed["last_id"] == listed["data"][0]["id"]


def test_after_the_last_id_gives_an_empty_page_and_a_foreign_cursor_is_400(admin, tenants):
    projects = admin.admin.organization.projects
    last = projects.list().last_id
    empty = projects.list(after=last)
    assert (empty.data, empty.has_more) == ([], False)
    with pytest.raises(openai.BadRequestError) as err:
        projects.list(after=tenants["b"].project_id)
    assert err.value.param == "after"
    with pytest.raises(openai.BadRequestError) as err:
        projects.list(limit=101)
    assert (err.value.param, err.value.code) == ("limit", "invalid_value")


def test_a_projects_concurrent_jobs_cap_is_set_through_the_admin_api(admin, stores):
    projects = admin.admin.organization.projects
    made = projects.create(name="capped", extra_body={"max_running_jobs": 3})
    assert made.max_running_jobs == 3  # the extension field, echoed
    assert stores.metadata.get_project(made.id, organization_id=None).max_running_jobs == 3
    assert projects.update(made.id, extra_body={"max_running_jobs": 1}).max_running_jobs == 1
    assert projects.update(made.id, name="renamed").max_running_jobs == 1  # untouched when not sent
    assert projects.update(made.id, extra_body={"max_running_jobs": None}).max_running_jobs is None  # the default
    with pytest.raises(openai.BadRequestError) as err:
        projects.update(made.id, extra_body={"max_running_jobs": 0})
    assert (err.value.param, err.value.code) == ("max_running_jobs", "invalid_value")


def test_project_key_on_admin_routes_is_403(admin_client, tenants):
    # The SDK sends admin routes only an `admin_api_key` (without one it raises TypeError locally).
    projects = admin_client(tenants["a"].key).admin.organization.projects
    with pytest.raises(openai.PermissionDeniedError) as err:
        projects.list()
    assert err.value.code == "insufficient_permissions"
    validate_error(err.value.response.json())
    with pytest.raises(openai.PermissionDeniedError):
        projects.api_keys.list(tenants["a"].project_id)


def test_admin_key_on_a_project_route_is_403(http, admin_key):
    with pytest.raises(openai.PermissionDeniedError) as err:
        project_client(http, admin_key).files.list()
    assert err.value.code == "insufficient_permissions"


def test_another_organizations_project_is_404(admin, tenants):
    foreign = tenants["b"].project_id
    projects = admin.admin.organization.projects
    for call in (
        lambda: projects.retrieve(foreign),
        lambda: projects.archive(foreign),
        lambda: projects.api_keys.list(foreign),
        lambda: projects.api_keys.delete(tenants["b"].key_id, project_id=foreign),
        lambda: projects.service_accounts.create(foreign, name="intruder"),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.code == "project_not_found"
        validate_error(err.value.response.json())


def test_operator_acts_on_the_organization_its_header_names(admin_client, tenants):
    acme = admin_client(OPERATOR_KEY, tenants["a"].organization_id).admin.organization.projects
    globex = admin_client(OPERATOR_KEY, tenants["b"].organization_id).admin.organization.projects
    assert {p.id for p in acme.list()} == {tenants["a"].project_id, tenants["a2"].project_id}
    assert [p.id for p in globex.list()] == [tenants["b"].project_id]
    assert globex.create(name="by operator").id in [p.id for p in globex.list()]

    with pytest.raises(openai.AuthenticationError) as err:
        admin_client(OPERATOR_KEY, "org-nope").admin.organization.projects.list()
    assert err.value.code == "invalid_organization"
    with pytest.raises(openai.BadRequestError) as err:
        acme.list(after=tenants["b"].project_id)  # narrowed by the header: another organization's cursor
    assert err.value.param == "after"


def test_operator_without_a_header_sees_every_organization(admin_client, http, tenants):
    acme = admin_client(OPERATOR_KEY, tenants["a"].organization_id).admin.organization.projects
    globex = admin_client(OPERATOR_KEY, tenants["b"].organization_id).admin.organization.projects
    made = [(acme if i % 2 else globex).create(name=f"x{i}") for i in range(4)]
    every = admin_client(OPERATOR_KEY).admin.organization.projects

    whole = every.list(limit=100)
    owners = {p.id: p.organization_id for p in whole.data}
    expected = {tenants[t].project_id: tenants[t].organization_id for t in ("a", "a2", "b")}
    expected.update({p.id: p.organization_id for p in made})
    assert owners == expected
    assert [p.id for p in every.list(limit=2)] == [p.id for p in whole.data]  # pages across organizations
    second = every.list(limit=2, after=whole.data[1].id)
    assert ([p.id for p in second.data], second.has_more) == ([p.id for p in whole.data[2:4]], True)
    status, body = raw(http, OPERATOR_KEY, "GET", "/organization/projects", params={"limit": 3})
    assert status == 200
    assert set(body["data"][0]) == PROJECT_KEYS
    globex.archive(made[0].id)
    assert made[0].id not in [p.id for p in every.list()]
    assert made[0].id in [p.id for p in every.list(include_archived=True)]

    # A route on one project acts in that project's organization, whichever it is.
    foreign = tenants["b"].project_id
    assert every.retrieve(foreign).organization_id == tenants["b"].organization_id
    assert every.update(foreign, name="renamed by operator").name == "renamed by operator"
    assert [k.id for k in every.api_keys.list(foreign)] == [tenants["b"].key_id]
    account = every.service_accounts.create(foreign, name="ops")
    assert [a.id for a in every.service_accounts.list(foreign)] == [account.id]
    assert every.service_accounts.delete(account.id, project_id=foreign).deleted
    assert every.archive(made[1].id).status == "archived"
    with pytest.raises(openai.NotFoundError) as err:
        every.retrieve("proj_nope")
    assert err.value.code == "project_not_found"

    # Creating a project needs one organization: 400 naming the header.
    with pytest.raises(openai.BadRequestError) as err:
        every.create(name="whose?")
    assert (err.value.param, err.value.code) == ("OpenAI-Organization", "missing_required_parameter")
    assert "OpenAI-Organization" in err.value.message


def test_service_account_key_works_on_project_routes(admin, http, admin_key, tenants):
    project_id = tenants["a"].project_id
    accounts = admin.admin.organization.projects.service_accounts
    status, body = raw(
        http, admin_key, "POST", f"/organization/projects/{project_id}/service_accounts", json={"name": "ci"}
    )
    assert status == 200
    assert set(body) == SERVICE_ACCOUNT_KEYS | {"api_key"}
    assert (body["object"], body["role"]) == ("organization.project.service_account", "member")
    assert set(body["api_key"]) == {"object", "value", "name", "created_at", "id", "expires_at"}
    assert body["api_key"]["object"] == "organization.project.service_account.api_key"

    created = accounts.create(project_id, name="bot")
    assert created.api_key is not None
    client = project_client(http, created.api_key.value)
    assert client.files.list().data == []
    assert client.models.list().data is not None

    assert accounts.retrieve(created.id, project_id=project_id).name == "bot"
    assert [a.name for a in accounts.list(project_id, limit=1)] == ["ci", "bot"]
    key = admin.admin.organization.projects.api_keys.retrieve(created.api_key.id, project_id=project_id)
    assert key.owner.type == "service_account"
    assert key.owner.service_account is not None
    assert (key.owner.service_account.id, key.owner.service_account.role) == (created.id, "member")
    assert created.api_key.value not in key.redacted_value


def test_deleting_a_service_account_revokes_its_key(admin, http, tenants):
    project_id = tenants["a"].project_id
    accounts = admin.admin.organization.projects.service_accounts
    created = accounts.create(project_id, name="temporary")
    assert created.api_key is not None
    client = project_client(http, created.api_key.value)
    client.files.list()

    deleted = accounts.delete(created.id, project_id=project_id)
    assert (deleted.id, deleted.object, deleted.deleted) == (
        created.id,
        "organization.project.service_account.deleted",
        True,
    )
    with pytest.raises(openai.AuthenticationError) as err:
        client.files.list()
    assert err.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as err:
        accounts.retrieve(created.id, project_id=project_id)
    assert err.value.code == "service_account_not_found"
    listed = admin.admin.organization.projects.api_keys.list(project_id)
    assert created.api_key.id not in [k.id for k in listed]


def test_deleting_a_project_api_key_revokes_it_at_once(admin, client_a, http, admin_key, tenants):
    project_id, key_id = tenants["a"].project_id, tenants["a"].key_id
    keys = admin.admin.organization.projects.api_keys
    client_a.files.list()
    status, listed = raw(http, admin_key, "GET", f"/organization/projects/{project_id}/api_keys")
    assert status == 200
    assert set(listed) == LIST_KEYS
    (body,) = listed["data"]
    assert set(body) == API_KEY_KEYS
    assert (body["object"], body["owner_project_access"]) == ("organization.project.api_key", "active")
    assert body["owner"]["type"] == "user"
    assert set(body["owner"]["user"]) == {"id", "email", "name", "created_at", "role"}
    assert isinstance(body["last_used_at"], int)

    deleted = keys.delete(key_id, project_id=project_id)
    assert (deleted.id, deleted.object, deleted.deleted) == (key_id, "organization.project.api_key.deleted", True)
    with pytest.raises(openai.AuthenticationError):
        client_a.files.list()
    with pytest.raises(openai.NotFoundError) as err:
        keys.retrieve(key_id, project_id=project_id)
    assert err.value.code == "api_key_not_found"
    with pytest.raises(openai.NotFoundError):
        keys.delete(key_id, project_id=project_id)


def test_a_service_account_key_is_not_deleted_as_a_project_key(admin, tenants):
    project_id = tenants["a"].project_id
    created = admin.admin.organization.projects.service_accounts.create(project_id, name="svc")
    assert created.api_key is not None
    with pytest.raises(openai.BadRequestError) as err:
        admin.admin.organization.projects.api_keys.delete(created.api_key.id, project_id=project_id)
    assert err.value.param == "api_key_id"


def test_an_archived_projects_keys_stop_working(admin, client_a, http, tenants):
    project_id = tenants["a"].project_id
    projects = admin.admin.organization.projects
    account = projects.service_accounts.create(project_id, name="before archive")
    assert account.api_key is not None
    projects.archive(project_id)
    with pytest.raises(openai.AuthenticationError) as err:
        client_a.files.list()
    assert err.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        project_client(http, account.api_key.value).models.list()


def test_an_archived_project_shows_inactive_keys_and_takes_no_service_account(admin, tenants):
    project_id = tenants["a"].project_id
    projects = admin.admin.organization.projects
    projects.archive(project_id)
    keys = projects.api_keys.list(project_id)
    assert {k.owner_project_access for k in keys} == {"inactive"}
    assert projects.api_keys.list(project_id, owner_project_access="active").data == []
    with pytest.raises(openai.BadRequestError) as err:
        projects.service_accounts.create(project_id, name="after archive")
    assert err.value.code == "project_archived"


def test_unknown_and_missing_body_fields_are_400_naming_them(admin, http, admin_key, tenants):
    with pytest.raises(openai.BadRequestError) as err:
        admin.admin.organization.projects.create(name="x", extra_body={"bogus": 1})
    assert (err.value.code, err.value.param) == ("unknown_parameter", "bogus")
    validate_error(err.value.response.json())
    status, body = raw(http, admin_key, "POST", "/organization/projects", json={})
    assert status == 400
    assert (body["error"]["code"], body["error"]["param"]) == ("missing_required_parameter", "name")
    with pytest.raises(openai.BadRequestError) as err:
        admin.admin.organization.projects.service_accounts.create(
            tenants["a"].project_id, name="svc", extra_body={"scopes": []}
        )
    assert err.value.param == "scopes"


def test_features_tunewright_cannot_honour_are_refused_by_name(admin, tenants):
    projects = admin.admin.organization.projects
    with pytest.raises(openai.BadRequestError) as err:
        projects.create(name="eu", residency="EU_STORAGE_PROCESSING")
    assert err.value.param == "residency"
    assert projects.create(name="global", residency="GLOBAL").status == "active"
    with pytest.raises(openai.BadRequestError) as err:
        projects.create(name="  ")
    assert err.value.param == "name"

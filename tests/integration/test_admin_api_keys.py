"""/v1/organization/admin_api_keys through the SDK's `client.admin.organization.admin_api_keys`."""

from __future__ import annotations

import time
from collections.abc import Callable

import openai
import pytest
from fixtures.app import OPERATOR_KEY, make_key
from fixtures.contract import validate_error, validate_operation, validate_sdk_type
from openai.types.admin.organization import AdminAPIKey, AdminAPIKeyCreateResponse

pytestmark = pytest.mark.integration

AdminFactory = Callable[..., openai.OpenAI]


@pytest.fixture
def admin(acme_admin: openai.OpenAI) -> openai.OpenAI:
    """SDK client holding an admin key of organization `acme` (fixtures.app)."""
    return acme_admin


def test_create_list_retrieve_and_delete_admin_keys(admin, admin_client):
    keys = admin.admin.organization.admin_api_keys
    raw = keys.with_raw_response.create(name="ops", expires_in_seconds=3600)
    created, body = raw.parse(), raw.http_response.json()
    validate_operation(body, "admin-api-keys-create")
    validate_sdk_type(body, AdminAPIKeyCreateResponse)
    assert created.value.startswith("sk-admin-")
    assert created.value not in created.redacted_value
    assert created.expires_at is not None and 3590 < created.expires_at - time.time() <= 3600
    assert (created.owner.type, created.owner.object, created.owner.role) == ("user", "organization.user", "owner")

    # the new key is an admin key of the same organization
    fresh = admin_client(created.value).admin.organization
    assert [k.id for k in fresh.admin_api_keys.list()] == [k.id for k in keys.list()]
    listed = keys.with_raw_response.list(order="desc", limit=1)
    validate_operation(listed.http_response.json(), "admin-api-keys-list")
    page = listed.parse()
    assert [k.id for k in page.data] == [created.id] and page.has_more
    ascending = [k.id for k in keys.list(order="asc")]
    assert ascending[-1] == created.id and len(ascending) == 2
    assert [k.id for k in keys.list(after=ascending[0])] == [created.id]

    got = keys.with_raw_response.retrieve(created.id)
    validate_operation(got.http_response.json(), "admin-api-keys-get")
    validate_sdk_type(got.http_response.json(), AdminAPIKey)
    assert "value" not in got.http_response.json()
    assert got.parse().name == "ops"

    deleted = keys.with_raw_response.delete(created.id)
    validate_operation(deleted.http_response.json(), "admin-api-keys-delete")
    assert (deleted.parse().id, deleted.parse().deleted) == (created.id, True)
    with pytest.raises(openai.AuthenticationError):
        fresh.admin_api_keys.list()
    with pytest.raises(openai.NotFoundError) as err:
        keys.retrieve(created.id)
    assert (err.value.code, err.value.param) == ("api_key_not_found", "key_id")
    with pytest.raises(openai.NotFoundError):
        keys.delete(created.id)

    logged = admin.admin.organization.audit_logs.list(event_types=["api_key.created", "api_key.deleted"]).data
    assert [(e.type, e.project) for e in logged[:2]] == [("api_key.deleted", None), ("api_key.created", None)]


def test_bad_bodies_and_queries_are_400_naming_the_field(admin):
    keys = admin.admin.organization.admin_api_keys
    for body, param in (
        ({"name": "x", "expires_in_seconds": 0}, "expires_in_seconds"),
        ({"name": "x", "expires_in_seconds": 31_536_001}, "expires_in_seconds"),
        ({"name": " "}, "name"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({}, "name"),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            admin.post("/organization/admin_api_keys", body=body, cast_to=object)
        assert err.value.param == param, body
        validate_error(err.value.response.json())
    with pytest.raises(openai.BadRequestError) as err:
        keys.list(extra_query={"order": "newest"})
    assert err.value.param == "order"
    with pytest.raises(openai.BadRequestError) as err:
        keys.list(limit=101)
    assert err.value.param == "limit"


def test_an_expired_admin_key_is_refused(admin, admin_client):
    created = admin.admin.organization.admin_api_keys.create(name="brief", expires_in_seconds=1)
    assert created.expires_at is not None
    time.sleep(max(0.0, created.expires_at - time.time()) + 0.1)
    with pytest.raises(openai.AuthenticationError) as err:
        admin_client(created.value).admin.organization.projects.list()
    assert err.value.code == "api_key_expired"
    assert admin.admin.organization.admin_api_keys.retrieve(created.id).expires_at == created.expires_at


def test_tenancy(admin, admin_client, stores, tenants):
    ours = admin.admin.organization.admin_api_keys.create(name="ours")
    other_org = make_key(stores, organization_id=tenants["b"].organization_id, project_id=None, kind="admin")
    theirs = admin_client(other_org.secret_hash).admin.organization.admin_api_keys
    assert ours.id not in [k.id for k in theirs.list()]
    with pytest.raises(openai.NotFoundError):
        theirs.retrieve(ours.id)
    with pytest.raises(openai.NotFoundError):
        theirs.delete(ours.id)
    with pytest.raises(openai.PermissionDeniedError):
        admin_client(tenants["a"].key).admin.organization.admin_api_keys.list()
    with pytest.raises(openai.BadRequestError) as err:  # the operator must name the organization
        admin_client(OPERATOR_KEY).admin.organization.admin_api_keys.create(name="whose?")
    assert err.value.param == "OpenAI-Organization"
    operator = admin_client(OPERATOR_KEY, organization=tenants["a"].organization_id).admin.organization
    assert ours.id in [k.id for k in operator.admin_api_keys.list()]
    made = operator.admin_api_keys.create(name="by the operator")
    assert made.id in [k.id for k in admin.admin.organization.admin_api_keys.list()]

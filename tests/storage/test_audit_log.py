"""The audit log in the metadata store, over SQLite and PostgreSQL: written with the change, listed by filters."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

from tunewright.storage import audit
from tunewright.storage.api_keys import mint_api_key
from tunewright.storage.audit import ActorMatch, AuditActor, AuditLogFilter, record_audit
from tunewright.storage.errors import Conflict, InvalidCursor, LimitExceeded
from tunewright.storage.ids import new_id
from tunewright.storage.records import ModelRecord, PermissionRecord, ServiceAccountRecord, WebhookEndpointRecord

if TYPE_CHECKING:
    from tunewright.storage.metadata import SQLMetadataStore
    from tunewright.storage.records import AuditLogRecord, ProjectRecord

ADMIN = AuditActor(key_id="key_admin", kind="admin")
ROBOT = AuditActor(key_id="key_robot", kind="service_account", service_account_id="svc_acct_robot")
EVERYTHING = AuditLogFilter()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> itertools.count[int]:
    """Each entry one second after the last, from 1000."""
    seconds = itertools.count(1000)
    monkeypatch.setattr(audit, "time", SimpleNamespace(time=lambda: next(seconds)))
    return seconds


def project(store: SQLMetadataStore, org: str = "acme", name: str = "p") -> ProjectRecord:
    organization = store.find_organization(slug=org) or store.create_organization(name=org, slug=org)
    return store.create_project(organization_id=organization.id, name=name, actor=ADMIN)


def entries(store: SQLMetadataStore, organization_id: str | None, **filters: object) -> list[AuditLogRecord]:
    page = store.list_audit_logs(
        organization_id=organization_id, filters=AuditLogFilter(**filters), after=None, before=None, limit=100
    )
    return page.items


def permission(store: SQLMetadataStore, owner: ProjectRecord, project_id: str) -> PermissionRecord:
    """A permission on a new model of `owner` for `project_id` (not stored yet)."""
    model = ModelRecord(
        id=f"ft:base:acme::{new_id('job')[-8:]}",
        project_id=owner.id,
        organization_id=owner.organization_id,
        created=1,
        owned_by="acme",
        base_model="base",
        job_id="ftjob-x",
        adapter_key="a",
    )
    store.insert_model(model)
    return PermissionRecord(
        id=new_id("permission"), model=model.id, owner_project_id=owner.id, project_id=project_id, created_at=1
    )


def endpoint(project_id: str) -> WebhookEndpointRecord:
    return WebhookEndpointRecord(
        id=new_id("webhook_endpoint"),
        project_id=project_id,
        created_at=1,
        updated_at=1,
        name="hook",
        url="https://example.com/hook",
        event_types=["fine_tuning.job.succeeded"],
        secret="whsec_x",
    )


def test_each_change_is_recorded_with_its_actor_project_and_payload(metadata_store: SQLMetadataStore) -> None:
    store = metadata_store
    p = project(store, name="first")
    store.update_project(p.id, organization_id=p.organization_id, actor=ADMIN, name="second")
    account = ServiceAccountRecord(
        id=new_id("service_account"), project_id=p.id, name="bot", role="member", created_at=1
    )
    key, _ = mint_api_key(
        organization_id=p.organization_id,
        project_id=p.id,
        name="k",
        kind="service_account",
        service_account_id=account.id,
    )
    store.create_service_account(account, key, actor=ADMIN)
    grant = permission(store, p, "proj_x")
    store.create_permissions([grant], actor=ROBOT)
    store.create_permissions([grant], actor=ROBOT)  # the pair exists: no change, no entry
    store.delete_permission(grant.id, model_id=grant.model, owner_project_id=p.id, actor=ROBOT)
    hook = endpoint(p.id)
    store.create_webhook_endpoint(hook, max_per_project=16, actor=ROBOT)
    store.update_webhook_endpoint(hook.id, project_id=p.id, actor=ROBOT, url="https://example.com/2")
    store.update_webhook_endpoint(hook.id, project_id=p.id, actor=ROBOT, secret="whsec_y", previous_secret="whsec_x")
    store.delete_webhook_endpoint(hook.id, project_id=p.id, actor=ROBOT)
    store.delete_service_account(account.id, project_id=p.id, actor=ADMIN)
    store.update_project(p.id, organization_id=p.organization_id, actor=ADMIN, status="archived", archived_at=5)

    found = entries(store, p.organization_id)[::-1]  # oldest first
    assert [(e.type, e.details) for e in found] == [
        ("project.created", {"id": p.id, "data": {"name": "first", "title": "first"}}),
        ("project.updated", {"id": p.id, "changes_requested": {"title": "second", "name": "second"}}),
        ("service_account.created", {"id": account.id, "data": {"role": "member"}}),
        ("api_key.created", {"id": key.id}),
        (
            "checkpoint.permission.created",
            {"id": grant.id, "data": {"project_id": "proj_x", "fine_tuned_model_checkpoint": grant.model}},
        ),
        ("checkpoint.permission.deleted", {"id": grant.id}),
        (
            "webhook_endpoint.created",
            {"id": hook.id, "data": {"name": "hook", "url": hook.url, "event_types": hook.event_types}},
        ),
        ("webhook_endpoint.updated", {"id": hook.id, "changes_requested": {"url": "https://example.com/2"}}),
        ("webhook_endpoint.secret_rotated", {"id": hook.id, "data": {"keep_old_secret_active_for_24_hours": True}}),
        ("webhook_endpoint.deleted", {"id": hook.id}),
        ("service_account.deleted", {"id": account.id}),
        ("api_key.deleted", {"id": key.id}),  # its key, revoked with it
        ("project.archived", {"id": p.id}),
    ]
    assert {e.project_id for e in found} == {p.id}
    assert found[0].project_name == "first"
    assert found[-1].project_name == "second"  # the name when the entry was written
    assert {e.resource_id for e in found[4:6]} == {grant.id}
    robot = [e for e in found if e.actor_key_id == ROBOT.key_id]
    assert {(e.actor_kind, e.actor_service_account_id) for e in robot} == {("service_account", "svc_acct_robot")}


def test_an_admin_key_made_without_an_actor_is_recorded_in_its_organization_without_one(
    metadata_store: SQLMetadataStore,
) -> None:
    org = metadata_store.create_organization(name="acme", slug="acme")
    key, _ = mint_api_key(organization_id=org.id, project_id=None, name="admin", kind="admin")
    metadata_store.create_api_key(key)
    [entry] = entries(metadata_store, org.id)
    assert (entry.type, entry.project_id, entry.project_name, entry.actor_kind) == ("api_key.created", None, None, None)


def test_a_change_that_fails_or_rolls_back_leaves_no_entry(metadata_store: SQLMetadataStore) -> None:
    p = project(metadata_store)
    key, _ = mint_api_key(organization_id=p.organization_id, project_id=p.id, name="k", kind="project")
    metadata_store.create_api_key(key, actor=ADMIN)
    with pytest.raises(Conflict):
        metadata_store.create_api_key(key, actor=ADMIN)  # the same secret hash again
    with pytest.raises(LimitExceeded):
        metadata_store.create_webhook_endpoint(endpoint(p.id), max_per_project=0, actor=ADMIN)
    with pytest.raises(RuntimeError), metadata_store.database.transaction(immediate=True) as conn:
        record_audit(conn, ADMIN, "rate_limit.updated", project_id=p.id, details={"id": "rl-x"})
        raise RuntimeError("the change fails after its entry was written")
    assert [e.type for e in entries(metadata_store, p.organization_id)] == ["api_key.created", "project.created"]


@pytest.mark.usefixtures("clock")
def test_filters_keep_what_every_one_of_them_matches(metadata_store: SQLMetadataStore) -> None:
    store = metadata_store
    p1 = project(store, name="one")  # 1000
    p2 = project(store, name="two")  # 1001
    store.create_permissions([permission(store, p1, p2.id)], actor=ROBOT)  # 1002
    store.update_project(p2.id, organization_id=p2.organization_id, actor=ROBOT, name="deux")  # 1003
    org = p1.organization_id

    def types(**filters: object) -> list[str]:
        return [e.type for e in entries(store, org, **filters)]

    assert types(event_types=("project.updated", "project.created")) == ["project.updated", *["project.created"] * 2]
    assert types(event_types=()) == []
    assert types(project_ids=(p1.id,)) == ["checkpoint.permission.created", "project.created"]
    assert types(resource_ids=(p2.id,)) == ["project.updated", "project.created"]
    assert types(actors=(ActorMatch(ids=("svc_acct_robot",)),)) == ["project.updated", "checkpoint.permission.created"]
    assert types(actors=(ActorMatch(ids=(ROBOT.key_id,)), ActorMatch(kinds=("admin",)))) == []
    assert types(actors=(ActorMatch(kinds=("admin",)),)) == ["project.created", "project.created"]
    assert types(effective_min=1001, effective_max=1002) == ["checkpoint.permission.created", "project.created"]
    assert types(project_ids=(p2.id,), event_types=("project.created",)) == ["project.created"]


def test_entries_stay_in_their_organization(metadata_store: SQLMetadataStore) -> None:
    mine = project(metadata_store, org="acme")
    theirs = project(metadata_store, org="globex")
    assert [e.project_id for e in entries(metadata_store, mine.organization_id)] == [mine.id]
    assert {e.project_id for e in entries(metadata_store, None)} == {mine.id, theirs.id}  # the operator, unscoped
    their_entry = entries(metadata_store, theirs.organization_id)[0].id
    with pytest.raises(InvalidCursor):
        metadata_store.list_audit_logs(
            organization_id=mine.organization_id, filters=EVERYTHING, after=their_entry, before=None, limit=10
        )


def test_after_pages_back_in_time_and_before_forward(metadata_store: SQLMetadataStore) -> None:
    made = [project(metadata_store, name=f"p{i}").id for i in range(5)]
    org = metadata_store.get_project(made[0], organization_id=None).organization_id
    newest_first = [e.id for e in entries(metadata_store, org)]

    def page(after: str | None = None, before: str | None = None) -> tuple[list[str], bool]:
        found = metadata_store.list_audit_logs(
            organization_id=org, filters=EVERYTHING, after=after, before=before, limit=2
        )
        return [e.id for e in found.items], found.has_more

    assert page() == (newest_first[:2], True)
    assert page(after=newest_first[1]) == (newest_first[2:4], True)
    assert page(after=newest_first[3]) == (newest_first[4:], False)
    assert page(before=newest_first[4]) == (newest_first[2:4], True)
    assert page(before=newest_first[1]) == (newest_first[:1], False)

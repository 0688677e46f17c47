"""/v1/models and checkpoint permissions through the real openai SDK."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from fixtures.contract import validate_error, validate_operation
from fixtures.models import make_model

from tunewright.api.app import create_app
from tunewright.storage.errors import NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.keys import adapter_blob_prefix
from tunewright.storage.records import CheckpointRecord, ModelRecord
from tunewright.trainer.publish import drop_checkpoint

pytestmark = pytest.mark.integration

BASE = "smollm2-135m-instruct"


def auth(tenant):
    return {"Authorization": f"Bearer {tenant.key}"}


class PublishedJob:
    """A job of tenant `a` created through the SDK, with what its worker would publish: checkpoints at steps
    10, 20, 30 (each a callable model with adapter blobs) and the final model; checkpoint 20 is shared with `a2`.
    """

    def __init__(self, client, stores, tenant, client_a2, a2_project_id):
        data = (Path(__file__).resolve().parent.parent / "assets" / "valid_chat.jsonl").read_bytes()
        training = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
        self.job = client.fine_tuning.jobs.create(model=BASE, training_file=training.id)
        self.stores, self.tenant = stores, tenant
        self.final = f"ft:{BASE}:{tenant.organization_slug}::{self.job.id[-8:]}"
        self.checkpoints = {step: f"{self.final}:ckpt-step-{step}" for step in (10, 20, 30)}
        self.checkpoint_ids = {step: new_id("checkpoint") for step in self.checkpoints}
        for step, model in self.checkpoints.items():
            record = self.model(model, f"ckpt-step-{step}", kind="checkpoint")
            checkpoint = CheckpointRecord(
                id=self.checkpoint_ids[step],
                job_id=self.job.id,
                project_id=tenant.project_id,
                created_at=1_700_000_000 + step,
                step_number=step,
                fine_tuned_model_checkpoint=model,
                metrics={"step": float(step)},
                blob_key=record.adapter_key,
            )
            stores.metadata.add_checkpoint(checkpoint, record)
        stores.metadata.insert_model(self.model(self.final, "final", kind="fine-tune"))
        client.fine_tuning.checkpoints.permissions.create(self.checkpoints[20], project_ids=[a2_project_id])
        assert self.checkpoints[20] in [m.id for m in client_a2.models.list()]

    def prefix(self, name):
        return adapter_blob_prefix(self.tenant.project_id, self.job.id, name)

    def model(self, model, name, *, kind):
        """The model row of an adapter stored under the job's prefix `name` (its blob is written here)."""
        self.stores.blobs.put(f"{self.prefix(name)}/adapter_model.safetensors", [b"weights"])
        return ModelRecord(
            id=model,
            project_id=self.tenant.project_id,
            organization_id=self.tenant.organization_id,
            created=1_700_000_000,
            owned_by=self.tenant.organization_slug,
            base_model=BASE,
            job_id=self.job.id,
            adapter_key=self.prefix(name),
            kind=kind,
        )

    def blob_exists(self, name):
        try:
            self.stores.blobs.size(f"{self.prefix(name)}/adapter_model.safetensors")
        except NotFound:
            return False
        return True


@pytest.fixture
def published(client_a, sdk, stores, tenants):
    return PublishedJob(client_a, stores, tenants["a"], sdk(tenants["a2"].key), tenants["a2"].project_id)


class ForgetfulEngine:
    """An engine that serves nothing and records the adapters the API tells it to forget (all a delete asks)."""

    def __init__(self):
        self.forgotten = []

    def tokenizer(self, base_model):
        raise AssertionError("deleting a model renders nothing")

    def context_length(self, base_model):
        raise AssertionError("deleting a model renders nothing")

    def submit(self, request, sink, *, cancelled):
        raise AssertionError("deleting a model generates nothing")

    def forget(self, adapter_name):
        self.forgotten.append(adapter_name)

    def close(self):
        pass


@pytest.fixture
def engine():
    return ForgetfulEngine()


@pytest.fixture
def app(settings, stores, engine):
    """The API with the recording engine handed in."""
    return create_app(settings, stores, engine=engine, sweep=False)


@pytest.fixture
def forgotten(engine):
    """The adapter names the engine is told to forget."""
    return engine.forgotten


def test_list_has_base_models_and_own_fine_tunes_only(client_a, client_b, stores, tenants, http):
    name = make_model(stores, tenants["a"])
    ids_a = [m.id for m in client_a.models.list()]
    assert ids_a[:2] == [BASE, "tiny-llama"]
    assert name in ids_a
    assert name not in [m.id for m in client_b.models.list()]
    raw = http.get("/v1/models", headers=auth(tenants["a"])).json()
    validate_operation(raw, "listModels")
    assert set(raw) == {"object", "data"}


def test_retrieve_model_with_colons_in_the_path(client_a, stores, tenants, http):
    name = make_model(stores, tenants["a"])
    model = client_a.models.retrieve(name)
    assert (model.id, model.object, model.owned_by, model.created) == (name, "model", "acme", 1_700_000_000)
    validate_operation(http.get(f"/v1/models/{name}", headers=auth(tenants["a"])).json(), "retrieveModel")
    assert client_a.models.retrieve(BASE).owned_by == "tunewright"


def test_unknown_and_foreign_models_are_404_model_not_found(client_a, client_b, stores, tenants):
    name = make_model(stores, tenants["a"])
    for client, model in ((client_a, "gpt-nope"), (client_b, name)):
        with pytest.raises(openai.NotFoundError) as err:
            client.models.retrieve(model)
        assert err.value.code == "model_not_found"
        validate_error(err.value.response.json())


def test_delete_own_model_then_it_is_gone(client_a, client_b, stores, tenants, http):
    name = make_model(stores, tenants["a"])
    with pytest.raises(openai.NotFoundError):
        client_b.models.delete(name)
    raw = http.delete(f"/v1/models/{name}", headers=auth(tenants["a"]))
    assert raw.status_code == 200
    validate_operation(raw.json(), "deleteModel")
    assert raw.json() == {"id": name, "object": "model", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client_a.models.retrieve(name)


def test_deleting_a_checkpoint_model_removes_its_checkpoint(published, client_a, sdk, tenants, forgotten):
    job, gone = published.job, published.checkpoints[20]
    assert client_a.models.delete(gone).deleted
    assert forgotten == [gone]
    steps = [c.step_number for c in client_a.fine_tuning.jobs.checkpoints.list(job.id)]
    assert steps == [30, 10], "the job no longer lists a checkpoint whose model is gone"
    with pytest.raises(openai.NotFoundError):
        client_a.models.retrieve(gone)
    with pytest.raises(openai.NotFoundError):
        sdk(tenants["a2"].key).models.retrieve(gone)  # its permission went with it
    with pytest.raises(openai.NotFoundError):
        client_a.fine_tuning.checkpoints.permissions.list(gone)
    assert not published.blob_exists("ckpt-step-20")
    assert published.blob_exists("ckpt-step-10")
    # The job's worker dropping it later (it keeps the last three) finds it gone already: not an error.
    project_id, checkpoint_id = published.tenant.project_id, published.checkpoint_ids[20]
    drop_checkpoint(
        published.stores, project_id=project_id, checkpoint_id=checkpoint_id, prefix=published.prefix("ckpt-step-20")
    )
    assert client_a.models.retrieve(published.final).id == published.final


def test_deleting_a_fine_tuned_model_deletes_its_checkpoint_models(published, client_a, sdk, tenants, forgotten):
    job = published.job
    assert client_a.models.delete(published.final).deleted
    assert sorted(forgotten) == sorted([published.final, *published.checkpoints.values()])
    assert client_a.fine_tuning.jobs.checkpoints.list(job.id).data == []
    ids = {m.id for m in client_a.models.list()}
    for model in (published.final, *published.checkpoints.values()):
        assert model not in ids
        with pytest.raises(openai.NotFoundError) as err:
            client_a.models.retrieve(model)
        assert err.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        sdk(tenants["a2"].key).models.retrieve(published.checkpoints[20])
    for name in ("final", "ckpt-step-10", "ckpt-step-20", "ckpt-step-30"):
        assert not published.blob_exists(name)
    assert client_a.fine_tuning.jobs.retrieve(job.id).id == job.id  # the job itself stays, as on OpenAI


def test_base_models_cannot_be_deleted(client_a):
    with pytest.raises(openai.PermissionDeniedError) as err:
        client_a.models.delete(BASE)
    assert err.value.code == "insufficient_permissions"


def test_sharing_a_checkpoint_with_a_project_of_the_same_organization(client_a, sdk, stores, tenants, http):
    name = make_model(stores, tenants["a"], name=f"ft:{BASE}:acme:sfx:Ab3dEf7h:ckpt-step-10", kind="checkpoint")
    client_a2 = sdk(tenants["a2"].key)
    assert name not in [m.id for m in client_a2.models.list()]
    created = client_a.fine_tuning.checkpoints.permissions.create(name, project_ids=[tenants["a2"].project_id])
    assert [p.project_id for p in created.data] == [tenants["a2"].project_id]
    assert created.data[0].object == "checkpoint.permission"
    again = client_a.fine_tuning.checkpoints.permissions.create(name, project_ids=[tenants["a2"].project_id])
    assert again.data[0].id == created.data[0].id
    assert name in [m.id for m in client_a2.models.list()]
    assert client_a2.models.retrieve(name).id == name
    with pytest.raises(openai.PermissionDeniedError):
        client_a2.models.delete(name)

    listed = http.get(f"/v1/fine_tuning/checkpoints/{name}/permissions", headers=auth(tenants["a"])).json()
    validate_operation(listed, "listFineTuningCheckpointPermissions")
    assert listed["last_id"] == created.data[0].id
    page = client_a.fine_tuning.checkpoints.permissions.list(name, project_id=tenants["a2"].project_id)
    assert len(page.data) == 1
    assert [p.id for p in client_a.fine_tuning.checkpoints.permissions.list(name)] == [created.data[0].id]

    deleted = client_a.fine_tuning.checkpoints.permissions.delete(created.data[0].id, fine_tuned_model_checkpoint=name)
    assert (deleted.object, deleted.deleted) == ("checkpoint.permission", True)
    assert name not in [m.id for m in client_a2.models.list()]
    with pytest.raises(openai.NotFoundError):
        client_a2.models.retrieve(name)


def test_sharing_with_another_organizations_project_is_400(client_a, stores, tenants):
    name = make_model(stores, tenants["a"])
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.checkpoints.permissions.create(name, project_ids=[tenants["b"].project_id])
    assert err.value.param == "project_ids[0]"


def test_only_the_owner_manages_permissions(client_b, stores, tenants):
    name = make_model(stores, tenants["a"])
    with pytest.raises(openai.NotFoundError):
        client_b.fine_tuning.checkpoints.permissions.create(name, project_ids=[tenants["b"].project_id])
    with pytest.raises(openai.NotFoundError):
        client_b.fine_tuning.checkpoints.permissions.list(name)


@pytest.mark.parametrize("order", ["sideways", "asc"])
def test_permission_order_words_are_openais(client_a, stores, tenants, order):
    name = make_model(stores, tenants["a"])
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.checkpoints.permissions.list(name, order=order)
    assert err.value.param == "order"


def test_an_admin_key_manages_permissions_on_its_organizations_models(sdk, stores, tenants, http):
    from fixtures.app import OPERATOR_KEY, make_key

    name = make_model(stores, tenants["a"])
    admin = make_key(stores, organization_id=tenants["a"].organization_id, project_id=None, kind="admin")
    admin_client = sdk(admin.secret_hash)
    created = admin_client.fine_tuning.checkpoints.permissions.create(name, project_ids=[tenants["a2"].project_id])
    assert [p.project_id for p in created.data] == [tenants["a2"].project_id]
    assert name in [m.id for m in sdk(tenants["a2"].key).models.list()]

    other = make_key(stores, organization_id=tenants["b"].organization_id, project_id=None, kind="admin")
    with pytest.raises(openai.NotFoundError):
        sdk(other.secret_hash).fine_tuning.checkpoints.permissions.list(name)
    # Without an organization header the operator reaches every organization's models.
    response = http.get(f"/v1/fine_tuning/checkpoints/{name}/permissions", headers=auth_key(OPERATOR_KEY))
    assert response.status_code == 200
    assert [p["project_id"] for p in response.json()["data"]] == [tenants["a2"].project_id]
    foreign = http.post(
        f"/v1/fine_tuning/checkpoints/{name}/permissions",
        json={"project_ids": [tenants["b"].project_id]},
        headers=auth_key(OPERATOR_KEY),
    )
    assert (foreign.status_code, foreign.json()["error"]["param"]) == (400, "project_ids[0]")
    narrowed = http.get(
        f"/v1/fine_tuning/checkpoints/{name}/permissions",
        headers={**auth_key(OPERATOR_KEY), "OpenAI-Organization": tenants["b"].organization_id},
    )
    assert narrowed.status_code == 404
    scoped = http.get(
        f"/v1/fine_tuning/checkpoints/{name}/permissions",
        headers={**auth_key(OPERATOR_KEY), "OpenAI-Organization": tenants["a"].organization_id},
    )
    assert scoped.status_code == 200
    assert [p["project_id"] for p in scoped.json()["data"]] == [tenants["a2"].project_id]


def auth_key(key):
    return {"Authorization": f"Bearer {key}"}

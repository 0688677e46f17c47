"""/v1/fine_tuning/jobs through the real openai SDK, every body checked against OpenAI's schemas."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from fixtures.contract import DEVIATION_NULL_EDGE_IDS, DEVIATION_PAUSED_STATUS, validate_error, validate_operation

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASE = "smollm2-135m-instruct"


@pytest.fixture
def training_file(client_a):
    return client_a.files.create(file=("train.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune")


def auth(tenant):
    return {"Authorization": f"Bearer {tenant.key}"}


def test_create_answers_validating_files_with_every_field(client_a, http, tenants, training_file):
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, suffix="my-model", seed=7)
    assert job.id.startswith("ftjob-")
    assert job.object == "fine_tuning.job"
    assert job.status == "validating_files"
    assert job.model == BASE
    assert job.organization_id == tenants["a"].organization_id
    assert job.seed == 7
    assert job.fine_tuned_model is None
    assert job.result_files == []
    assert job.hyperparameters.n_epochs == "auto"
    raw = http.get(f"/v1/fine_tuning/jobs/{job.id}", headers=auth(tenants["a"])).json()
    validate_operation(raw, "retrieveFineTuningJob")
    for key in ("error", "fine_tuned_model", "finished_at", "trained_tokens", "validation_file"):
        assert key in raw
        assert raw[key] is None
    assert raw["method"] == {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
        },
    }
    events = client_a.fine_tuning.jobs.list_events(job.id)
    assert events.data[0].message == f"Created fine-tuning job: {job.id}"


def test_method_hyperparameters_are_echoed_in_both_places(client_a, training_file):
    job = client_a.fine_tuning.jobs.create(
        model=BASE,
        training_file=training_file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "lora_rank": 8}}},
    )
    assert job.hyperparameters.n_epochs == 2
    assert job.method.supervised.hyperparameters.n_epochs == 2
    assert job.method.supervised.hyperparameters.batch_size == "auto"
    assert job.method.supervised.hyperparameters.to_dict()["lora_rank"] == 8


def test_legacy_hyperparameters_become_a_supervised_method(client_a, training_file):
    job = client_a.fine_tuning.jobs.create(
        model=BASE, training_file=training_file.id, hyperparameters={"n_epochs": 3, "batch_size": 4}
    )
    assert job.method.type == "supervised"
    assert job.method.supervised.hyperparameters.batch_size == 4
    assert job.hyperparameters.n_epochs == 3


def test_dpo_job_on_a_dpo_file(client_a):
    dpo = client_a.files.create(file=("dpo.jsonl", (ASSETS / "valid_dpo.jsonl").read_bytes()), purpose="fine-tune")
    job = client_a.fine_tuning.jobs.create(
        model=BASE, training_file=dpo.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}
    )
    assert job.method.dpo.hyperparameters.beta == 0.2
    assert job.hyperparameters.n_epochs == "auto"


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"model": "gpt-9"}, "model", "model_not_found"),
        ({"model": "ft:smollm2-135m-instruct:acme::abcdefgh"}, "model", "model_not_found"),
        ({"training_file": "file-nope"}, "training_file", "invalid_file"),
        ({"validation_file": "file-nope"}, "validation_file", "invalid_file"),
        ({"suffix": "x" * 65}, "suffix", "invalid_value"),
        ({"suffix": "has:colon"}, "suffix", "invalid_value"),
        ({"seed": -1}, "seed", "invalid_value"),
        ({"hyperparameters": {"n_epochs": 51}}, "hyperparameters.n_epochs", "invalid_value"),
        ({"hyperparameters": {"n_epochs": 1}, "method": {"type": "supervised"}}, "hyperparameters", "invalid_value"),
        ({"method": {"type": "reinforcement"}}, "method.reinforcement", "missing_required_parameter"),
        ({"method": {"type": "dpo", "supervised": {}}}, "method.supervised", "invalid_value"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
        ({"extra_body": {"colour": "red"}}, "colour", "unknown_parameter"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"warmup": 3}}}},
            "method.supervised.hyperparameters.warmup",
            "unknown_parameter",
        ),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_bad_create_requests_are_400_naming_the_param(client_a, training_file, kwargs, param, code):
    body = {"model": BASE, "training_file": training_file.id, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(**body)
    assert err.value.param == param, err.value.message
    assert err.value.code == code
    validate_error(err.value.response.json())


def test_missing_model_is_400_missing_required_parameter(http, tenants, training_file):
    response = http.post("/v1/fine_tuning/jobs", headers=auth(tenants["a"]), json={"training_file": training_file.id})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_required_parameter"
    assert response.json()["error"]["param"] == "model"


def test_malformed_json_is_400_invalid_json(http, tenants):
    response = http.post(
        "/v1/fine_tuning/jobs",
        headers={**auth(tenants["a"]), "content-type": "application/json"},
        content=b'{"model": ',
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    validate_error(response.json())


def test_a_training_line_nested_to_the_decoders_limit_is_a_line_located_400(client_a, http, tenants):
    good = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    turns = b'[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]'
    for depth in range(940, 1001, 4):  # the decoder takes these; the format rules then recurse deeper
        line = b'{"tools": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b', "messages": ' + turns + b"}\n"
        uploaded = http.post(
            "/v1/files",
            headers=auth(tenants["a"]),
            files={"file": ("t.jsonl", good * 11 + line)},
            data={"purpose": "fine-tune"},
        )
        if uploaded.status_code != 200:  # too deep for the upload's framing check already
            assert uploaded.status_code == 400, (depth, uploaded.text)
            assert "line 12: not valid JSON: nested too deeply" in uploaded.json()["error"]["message"]
            continue
        with pytest.raises(openai.BadRequestError) as err:
            client_a.fine_tuning.jobs.create(model=BASE, training_file=uploaded.json()["id"])
        assert err.value.code == "invalid_training_file", depth
        assert "line 12" in err.value.message, depth


def test_another_projects_file_gets_the_same_message_as_a_missing_one(client_a, client_b, training_file):
    messages = []
    for file_id in (training_file.id, "file-missing"):
        with pytest.raises(openai.BadRequestError) as err:
            client_b.fine_tuning.jobs.create(model=BASE, training_file=file_id)
        messages.append(err.value.message.replace(file_id, "<id>"))
    assert messages[0] == messages[1]


def test_a_file_with_the_wrong_purpose_is_400(client_a):
    other = client_a.files.create(file=("n.txt", b"notes"), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(model=BASE, training_file=other.id)
    assert err.value.param == "training_file"
    assert "fine-tune" in err.value.message


@pytest.mark.parametrize(
    ("asset", "needle"),
    [
        ("bad_role.jsonl", "line "),
        ("too_few_examples.jsonl", "at least 10"),
        ("missing_assistant.jsonl", "line "),
    ],
)
def test_small_bad_training_files_are_refused_at_create_naming_lines(client_a, asset, needle):
    bad = client_a.files.create(file=(asset, (ASSETS / asset).read_bytes()), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(model=BASE, training_file=bad.id)
    assert err.value.code == "invalid_training_file"
    assert err.value.param == "training_file"
    assert err.value.response.json()["error"]["message"].startswith("training_file ")
    assert needle in err.value.message


def test_a_chat_file_is_refused_for_a_dpo_job(client_a, training_file):
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, method={"type": "dpo"})
    assert err.value.code == "invalid_training_file"


def test_cancel_pause_resume_follow_the_state_table(client_a, stores, tenants, http, training_file):
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.pause(job.id)
    assert err.value.code == "invalid_job_state"
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.resume(job.id)
    assert err.value.code == "invalid_job_state"

    stores.metadata.transition_job(
        job.id, project_id=tenants["a"].project_id, allowed=("validating_files",), status="running"
    )
    paused = client_a.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    raw = http.get(f"/v1/fine_tuning/jobs/{job.id}", headers=auth(tenants["a"])).json()
    validate_operation(raw, "retrieveFineTuningJob", allow=(DEVIATION_PAUSED_STATUS,))
    resumed = client_a.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    cancelled = client_a.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert cancelled.finished_at is not None
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.cancel(job.id)
    assert err.value.code == "invalid_job_state"
    assert err.value.response.headers.get("x-should-retry") in (None, "false")
    messages = [e.message for e in client_a.fine_tuning.jobs.list_events(job.id)]
    assert messages[0] == "Fine-tuning job cancelled"
    assert messages[-1].startswith("Created fine-tuning job")


def test_action_posts_accept_an_empty_json_body(http, tenants, client_a, training_file):
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    response = http.post(
        f"/v1/fine_tuning/jobs/{job.id}/cancel",
        headers={**auth(tenants["a"]), "content-type": "application/json", "content-length": "0"},
    )
    assert response.status_code == 200
    validate_operation(response.json(), "cancelFineTuningJob")


def test_list_jobs_newest_first_with_paging_and_metadata_filter(client_a, http, tenants, training_file):
    ids = [
        client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, metadata={"team": t}).id
        for t in ("x", "y", "x")
    ]
    page = client_a.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == ids[::-1][:2]
    assert page.has_more is True
    assert [j.id for j in client_a.fine_tuning.jobs.list(limit=1)] == ids[::-1]
    assert [j.id for j in client_a.fine_tuning.jobs.list(metadata={"team": "x"})] == [ids[2], ids[0]]
    raw = http.get("/v1/fine_tuning/jobs", headers=auth(tenants["a"])).json()
    validate_operation(raw, "listPaginatedFineTuningJobs")
    empty = http.get("/v1/fine_tuning/jobs", params={"after": ids[0]}, headers=auth(tenants["a"])).json()
    assert empty == {"data": [], "has_more": False, "object": "list"}


def test_events_and_checkpoints_lists_have_openai_shapes(client_a, http, tenants, training_file):
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    events = http.get(f"/v1/fine_tuning/jobs/{job.id}/events", headers=auth(tenants["a"])).json()
    validate_operation(events, "listFineTuningEvents")
    checkpoints = http.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints", headers=auth(tenants["a"])).json()
    validate_operation(checkpoints, "listFineTuningJobCheckpoints")
    assert checkpoints == {"data": [], "first_id": None, "last_id": None, "has_more": False, "object": "list"}


def test_another_tenants_job_is_404_everywhere(client_a, client_b, training_file):
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    calls = (
        client_b.fine_tuning.jobs.retrieve,
        client_b.fine_tuning.jobs.cancel,
        client_b.fine_tuning.jobs.pause,
        client_b.fine_tuning.jobs.resume,
        client_b.fine_tuning.jobs.list_events,
        client_b.fine_tuning.jobs.checkpoints.list,
    )
    for call in calls:
        with pytest.raises(openai.NotFoundError) as err:
            call(job.id)
        assert err.value.code == "job_not_found"
    assert client_b.fine_tuning.jobs.list().data == []


def test_deleting_a_file_used_by_a_job_in_progress_is_refused(client_a, training_file):
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    with pytest.raises(openai.BadRequestError) as err:
        client_a.files.delete(training_file.id)
    assert job.id in err.value.message
    client_a.fine_tuning.jobs.cancel(job.id)
    assert client_a.files.delete(training_file.id).deleted is True


def test_continue_training_from_an_owned_fine_tuned_model(client_a, client_b, stores, tenants, training_file):
    from tunewright.storage.records import ModelRecord

    name = f"ft:{BASE}:acme:first:abcd1234"
    stores.metadata.insert_model(
        ModelRecord(
            id=name,
            project_id=tenants["a"].project_id,
            organization_id=tenants["a"].organization_id,
            created=1,
            owned_by="acme",
            base_model=BASE,
            job_id="ftjob-x",
            adapter_key="x/adapters/ftjob-x",
        )
    )
    job = client_a.fine_tuning.jobs.create(model=name, training_file=training_file.id)
    assert job.model == name
    b_file = client_b.files.create(file=("t.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as err:
        client_b.fine_tuning.jobs.create(model=name, training_file=b_file.id)
    assert err.value.code == "model_not_found"


def test_null_edge_ids_deviation_is_the_only_one_on_empty_pages(http, tenants):
    raw = http.get("/v1/files", headers=auth(tenants["a"])).json()
    validate_operation(raw, "listFiles", allow=(DEVIATION_NULL_EDGE_IDS,))
    assert raw["first_id"] is None


def huge_number_file() -> bytes:
    good = b'{"prompt": "a", "completion": "b"}\n'
    return good * 11 + b'{"prompt": "a", "completion": "b", "n": 1e999}\n' + good


def test_a_number_too_large_for_a_float_is_refused_at_upload_naming_the_line(client_a, tmp_path):
    with pytest.raises(openai.BadRequestError) as err:
        client_a.files.create(file=("t.jsonl", huge_number_file()), purpose="fine-tune")
    assert err.value.message.endswith(" line 12: not valid JSON: Number out of range")
    assert err.value.code == "invalid_training_file"
    path = tmp_path / "t.jsonl"
    path.write_bytes(huge_number_file())
    with pytest.raises(openai.BadRequestError) as err:
        client_a.uploads.upload_file_chunked(file=path, mime_type="text/jsonl", purpose="fine-tune", part_size=100)
    assert err.value.message.endswith(" line 12: not valid JSON: Number out of range")
    assert client_a.files.list().data == []


def test_a_stored_file_with_a_number_too_large_for_a_float_fails_job_creation_the_same_way(client_a, stores, tenants):
    import hashlib
    import io

    from tunewright.storage.keys import file_blob_key
    from tunewright.storage.records import FileRecord

    # A file stored without the check (before it existed): job creation refuses it with the same words.
    data, project_id = huge_number_file(), tenants["a"].project_id
    key = file_blob_key(project_id, "file-old")
    stores.blobs.put(key, io.BytesIO(data))
    stores.metadata.insert_file(
        FileRecord(
            id="file-old",
            project_id=project_id,
            bytes=len(data),
            created_at=1,
            filename="old.jsonl",
            purpose="fine-tune",
            blob_key=key,
            sha256=hashlib.sha256(data).hexdigest(),
        )
    )
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(model=BASE, training_file="file-old")
    assert err.value.message.endswith("training_file line 12: not valid JSON: Number out of range")
    assert (err.value.param, err.value.code) == ("training_file", "invalid_training_file")

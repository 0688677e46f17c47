"""Exports of fine-tuned models (`/v1/fine_tuning/jobs/{id}/exports`) on the tiny model, through the openai SDK.

A job trains with an in-process worker, an export is asked for through the SDK's generic `client.post`, the same
worker writes it, and the file comes back through `/v1/files/{id}/content`; what it holds is loaded as a user would
(PEFT, transformers, transformers' GGUF reader) and must generate what the service's own engine and PEFT do. Every
test runs on SQLite + local files and on PostgreSQL + S3 (moto over HTTP).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures.chat import no_eos
from fixtures.exports import (
    QUESTION,
    create_export,
    download,
    error_of,
    get_export,
    gguf_fields,
    gguf_tensor_types,
    greedy,
    last_logits,
    list_exports,
    peft_model,
    prompt_ids,
    safetensors_names,
    stored_adapter,
    tar_names,
    untar,
)
from fixtures.models import make_model
from fixtures.training import TINY, run_worker, train_tiny, training_settings

from tunewright.modeling.loading import load_tokenizer
from tunewright.storage.events import make_event
from tunewright.storage.ids import new_id, new_model_slot
from tunewright.storage.keys import adapter_blob_prefix
from tunewright.storage.records import JobRecord

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

NEW_TOKENS = 12
TINY_QWEN = "tiny-qwen"
QWEN_SHAPE = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
    "tie_word_embeddings",
    "eos_token_id",
    "pad_token_id",
)
"""What the tiny Qwen2 model takes from the tiny model's config: the same shape and tokens."""


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """A tiny Qwen2 model with the tiny model's tokenizer: an architecture GGUF export does not write."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    directory = tmp_path_factory.mktemp("tiny-qwen") / "model"
    tiny = json.loads((tiny_dir / "config.json").read_text())
    config = Qwen2Config(**{name: tiny[name] for name in QWEN_SHAPE})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    load_tokenizer(tiny_dir).save_pretrained(directory)
    return directory


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path, tiny_qwen_dir: Path) -> Any:
    settings = training_settings(request, tmp_path, backend, tiny_dir)
    settings.base_models = {**settings.base_models, TINY_QWEN: str(tiny_qwen_dir)}
    return settings


def finished_job(stores: Any, tenant: Any, *, base: str = TINY, status: str = "succeeded") -> tuple[JobRecord, str]:
    """A job row of `tenant` that ended as `status`, and its fine-tuned model's row (no adapter blobs): the API's
    rules need no training.
    """
    slot = new_model_slot()
    name = f"ft:{base}:{tenant.organization_slug}::{slot}"
    job = JobRecord(
        id=new_id("job"),
        project_id=tenant.project_id,
        organization_id=tenant.organization_id,
        created_at=int(time.time()),
        model=base,
        base_model=base,
        status=status,
        training_file="file-x",
        validation_file=None,
        hyperparameters={},
        method={"type": "supervised"},
        seed=1,
        model_slot=slot,
        fine_tuned_model=name if status == "succeeded" else None,
    )
    stores.metadata.insert_job(job, make_event(job.id, job.project_id, "Created"))
    if status == "succeeded":
        make_model(stores, tenant, name=name, base=base, job=job.id)
    return job, name


def engine_text(client: Any, model: str, tokenizer: Any) -> str:
    """What the service's engine answers the question with, greedily, for `NEW_TOKENS` tokens."""
    reply = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=NEW_TOKENS, temperature=0, logit_bias=no_eos(tokenizer)
    )
    assert reply.usage.completion_tokens == NEW_TOKENS
    return reply.choices[0].message.content


def banned(tokenizer: Any) -> list[int]:
    return [int(token) for token in no_eos(tokenizer)]


def test_an_adapter_export_loads_in_peft_and_answers_as_the_engine(
    client_a, client_b, stores, settings, tenants, tiny_dir, tmp_path
):
    job = train_tiny(client_a, stores, settings)
    created = create_export(client_a, job.id, format="adapter")
    assert created["object"] == "fine_tuning.export"
    assert created["id"].startswith("ftexp-")
    assert (created["job_id"], created["format"], created["checkpoint"]) == (job.id, "adapter", job.fine_tuned_model)
    assert (created["status"], created["file_id"], created["error"], created["finished_at"]) == (
        "queued",
        None,
        None,
        None,
    )
    assert (created["dtype"], created["quantization"]) == (None, None)
    assert run_worker(settings, stores) == ["succeeded"]

    done = get_export(client_a, job.id, created["id"])
    assert done["status"] == "succeeded"
    assert done["error"] is None
    assert done["finished_at"] >= done["created_at"]
    page = list_exports(client_a, job.id)
    assert [export["id"] for export in page["data"]] == [created["id"]]
    assert (page["first_id"], page["last_id"], page["has_more"]) == (created["id"], created["id"], False)

    file = client_a.files.retrieve(done["file_id"])
    assert file.purpose == "fine-tune-results"
    stem = job.fine_tuned_model.removeprefix("ft:").replace("::", "-").replace(":", "-")
    assert file.filename == f"{stem}-adapter.tar"
    archive = download(client_a, done["file_id"], tmp_path)
    assert tar_names(archive) == {"adapter_config.json", "adapter_model.safetensors"}
    stores.metadata.snapshot_storage(now=int(time.time()))  # the project's stored bytes count the export
    stored = sum(client_a.files.retrieve(f.id).bytes for f in client_a.files.list().data)
    assert stores.metadata.list_storage_usage(project_id=tenants["a"].project_id)[-1].bytes == stored >= file.bytes
    folder = untar(archive, tmp_path / "x")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY
    assert config["peft_type"] == "LORA"
    names = safetensors_names(folder / "adapter_model.safetensors")
    assert names and all(name.startswith("base_model.model.model.layers.") for name in names)
    assert all(name.endswith((".lora_A.weight", ".lora_B.weight")) for name in names)

    tokenizer = load_tokenizer(tiny_dir)
    reference = peft_model(tiny_dir, folder)
    tokens = greedy(reference, prompt_ids(tokenizer), new_tokens=NEW_TOKENS, banned=banned(tokenizer))
    assert engine_text(client_a, job.fine_tuned_model, tokenizer) == tokenizer.decode(tokens, skip_special_tokens=True)

    # Another project sees neither the job's exports nor their file, and cannot export the job.
    for call in (
        lambda: create_export(client_b, job.id, format="adapter"),
        lambda: list_exports(client_b, job.id),
        lambda: get_export(client_b, job.id, created["id"]),
    ):
        status, error = error_of(call)
        assert (status, error["code"]) == (404, "job_not_found")
    assert error_of(lambda: client_b.files.content(done["file_id"]))[0] == 404
    own_job, _ = finished_job(stores, tenants["b"])
    status, error = error_of(lambda: get_export(client_b, own_job.id, created["id"]))
    assert (status, error["code"], error["param"]) == (404, "export_not_found", "export_id")


def test_a_merged_export_generates_what_base_plus_adapter_does(client_a, stores, settings, tenants, tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = train_tiny(client_a, stores, settings)
    plain = create_export(client_a, job.id, format="merged")
    halved = create_export(client_a, job.id, format="merged", dtype="bf16")
    assert (plain["dtype"], halved["dtype"]) == (None, "bf16")
    assert run_worker(settings, stores, jobs=2) == ["succeeded", "succeeded"]
    plain = get_export(client_a, job.id, plain["id"])
    assert plain["dtype"] == "f32"  # the base model's, resolved by the worker

    archive = download(client_a, plain["file_id"], tmp_path)
    assert archive.name.endswith("-f32.tar")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= tar_names(archive)
    folder = untar(archive, tmp_path / "plain")
    merged = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    assert not any("lora" in name for name in merged.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    base_tokenizer = load_tokenizer(tiny_dir)
    assert tokenizer.chat_template == base_tokenizer.chat_template
    assert prompt_ids(tokenizer) == prompt_ids(base_tokenizer)

    adapter = stored_adapter(stores, adapter_blob_prefix(tenants["a"].project_id, job.id, "final"), tmp_path / "a")
    reference = peft_model(tiny_dir, adapter)
    ids = prompt_ids(base_tokenizer)
    expected = greedy(reference, ids, new_tokens=NEW_TOKENS, banned=banned(base_tokenizer))
    assert greedy(merged, ids, new_tokens=NEW_TOKENS, banned=banned(base_tokenizer)) == expected
    assert float((last_logits(merged, ids) - last_logits(reference, ids)).abs().max()) < 1e-4
    with reference.disable_adapter():  # the adapter trained something: the comparison is not the base's
        assert float((last_logits(reference, ids) - last_logits(merged, ids)).abs().max()) > 1e-3

    halved = get_export(client_a, job.id, halved["id"])
    folder = untar(download(client_a, halved["file_id"], tmp_path), tmp_path / "halved")
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"


def test_a_gguf_export_reads_back_with_transformers_and_generates_the_same(
    client_a, stores, settings, tenants, tiny_dir, tmp_path
):
    from transformers import AutoModelForCausalLM

    job = train_tiny(client_a, stores, settings, n_epochs=2)
    checkpoint = client_a.fine_tuning.jobs.checkpoints.list(job.id).data[-1]  # the first epoch's
    assert checkpoint.fine_tuned_model_checkpoint != job.fine_tuned_model
    full = create_export(client_a, job.id, format="gguf")
    small = create_export(
        client_a, job.id, format="gguf", quantization="q8_0", checkpoint=checkpoint.fine_tuned_model_checkpoint
    )
    assert (full["quantization"], small["quantization"]) == ("f16", "q8_0")
    assert small["checkpoint"] == checkpoint.fine_tuned_model_checkpoint
    assert run_worker(settings, stores, jobs=2) == ["succeeded", "succeeded"]

    tokenizer = load_tokenizer(tiny_dir)
    ids = prompt_ids(tokenizer)
    path = download(client_a, get_export(client_a, job.id, full["id"])["file_id"], tmp_path)
    assert path.name.endswith("-f16.gguf")
    fields = gguf_fields(path)
    assert fields["general.architecture"] == "llama"
    assert fields["general.name"] == job.fine_tuned_model
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    assert fields["tokenizer.ggml.tokens"] == [token for token, _ in by_id]
    specials = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    assert [i for i, kind in enumerate(fields["tokenizer.ggml.token_type"]) if kind == 3] == sorted(specials)
    merges = json.loads((tiny_dir / "tokenizer.json").read_text())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [" ".join(pair) for pair in merges]
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id
    assert "tokenizer.ggml.bos_token_id" not in fields  # the tiny model has none
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert set(gguf_tensor_types(path).values()) == {"F16", "F32"}

    # transformers' GGUF reader reverses what the export did (the rotary permutation included): same tokens.
    # (Its GGUF tokenizer reader fails on a model without a bos token; SmolLM2's suite reads the tokenizer back.)
    adapter = stored_adapter(stores, adapter_blob_prefix(tenants["a"].project_id, job.id, "final"), tmp_path / "a")
    reference = peft_model(tiny_dir, adapter)
    read_back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True).eval()
    expected = greedy(reference, ids, new_tokens=NEW_TOKENS, banned=banned(tokenizer))
    assert greedy(read_back, ids, new_tokens=NEW_TOKENS, banned=banned(tokenizer)) == expected
    assert float((last_logits(read_back, ids) - last_logits(reference, ids)).abs().max()) < 1e-2

    path = download(client_a, get_export(client_a, job.id, small["id"])["file_id"], tmp_path)
    assert path.name.endswith("-ckpt-step-3-q8_0.gguf")
    assert "Q8_0" in gguf_tensor_types(path).values()
    prefix = adapter_blob_prefix(tenants["a"].project_id, job.id, "ckpt-step-3")
    reference = peft_model(tiny_dir, stored_adapter(stores, prefix, tmp_path / "c"))
    read_back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True).eval()
    assert float((last_logits(read_back, ids) - last_logits(reference, ids)).abs().max()) < 5e-2


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"format": "onnx"}, "format", "invalid_value"),
        ({}, "format", "missing_required_parameter"),
        ({"format": "gguf", "quantization": "q4_0"}, "quantization", "invalid_value"),
        ({"format": "merged", "dtype": "f64"}, "dtype", "invalid_value"),
        ({"format": "adapter", "dtype": "f16"}, "dtype", "invalid_value"),
        ({"format": "merged", "quantization": "q8_0"}, "quantization", "invalid_value"),
        ({"format": "gguf", "checkpoint": "ft:tiny-llama:acme::nothere"}, "checkpoint", "invalid_value"),
        ({"format": "adapter", "colour": "red"}, "colour", "unknown_parameter"),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_a_bad_export_request_is_400_naming_its_param(client_a, stores, tenants, body, param, code):
    job, _ = finished_job(stores, tenants["a"])
    status, error = error_of(lambda: create_export(client_a, job.id, **body))
    assert (status, error["param"], error["code"]) == (400, param, code), error
    assert list_exports(client_a, job.id)["data"] == []


def test_only_a_succeeded_job_and_its_own_models_may_be_exported(client_a, stores, tenants):
    running, _ = finished_job(stores, tenants["a"], status="running")
    status, error = error_of(lambda: create_export(client_a, running.id, format="adapter"))
    assert (status, error["param"], error["code"]) == (400, "fine_tuning_job_id", "invalid_job_state")
    assert "'running'" in error["message"]

    job, model = finished_job(stores, tenants["a"])
    other, other_model = finished_job(stores, tenants["a"])
    status, error = error_of(lambda: create_export(client_a, job.id, format="adapter", checkpoint=other_model))
    assert (status, error["param"]) == (400, "checkpoint")
    status, error = error_of(lambda: create_export(client_a, "ftjob-nothere", format="adapter"))
    assert (status, error["code"], error["param"]) == (404, "job_not_found", "fine_tuning_job_id")
    status, error = error_of(lambda: get_export(client_a, job.id, "ftexp-nothere"))
    assert (status, error["code"]) == (404, "export_not_found")

    queued = create_export(client_a, job.id, format="gguf")
    assert (queued["checkpoint"], queued["quantization"], queued["dtype"]) == (model, "f16", None)
    newer = create_export(client_a, job.id, format="adapter", checkpoint=model)
    first = list_exports(client_a, job.id, limit=1)
    assert ([e["id"] for e in first["data"]], first["has_more"]) == ([newer["id"]], True)
    rest = list_exports(client_a, job.id, limit=1, after=newer["id"])
    assert ([e["id"] for e in rest["data"]], rest["has_more"]) == ([queued["id"]], False)
    status, error = error_of(lambda: list_exports(client_a, job.id, limit=0))
    assert (status, error["param"]) == (400, "limit")
    assert list_exports(client_a, other.id)["data"] == []

    client_a.models.delete(model)  # a deleted model leaves nothing to export
    status, error = error_of(lambda: create_export(client_a, job.id, format="adapter"))
    assert (status, error["param"]) == (400, "checkpoint")
    assert "deleted" in error["message"]


def test_a_failed_export_says_why(client_a, stores, settings, tenants):
    qwen_job, _ = finished_job(stores, tenants["a"], base=TINY_QWEN)
    unwritable = create_export(client_a, qwen_job.id, format="gguf")
    job, model = finished_job(stores, tenants["a"])
    orphaned = create_export(client_a, job.id, format="merged")
    client_a.models.delete(model)  # after the export was asked for
    assert sorted(run_worker(settings, stores, jobs=2)) == ["failed", "failed"]

    failed = get_export(client_a, qwen_job.id, unwritable["id"])
    assert failed["status"] == "failed"
    assert failed["file_id"] is None
    assert (failed["error"]["code"], failed["error"]["param"]) == ("unsupported_model", "format")
    assert "Qwen2ForCausalLM" in failed["error"]["message"]
    assert "llama" in failed["error"]["message"]
    assert failed["finished_at"] is not None
    failed = get_export(client_a, job.id, orphaned["id"])
    assert (failed["error"]["code"], failed["error"]["param"]) == ("model_not_found", "checkpoint")
    assert f"The model {model} was deleted" in failed["error"]["message"]


def test_an_export_held_by_a_dead_worker_is_written_once_its_lease_expires(client_a, stores, settings, tenants):
    job = train_tiny(client_a, stores, settings)
    export = create_export(client_a, job.id, format="adapter")
    dead = stores.queue.claim_export("dead-worker", lease_s=settings.lease_s, max_running_per_project=2)
    assert dead is not None and dead.export_id == export["id"]
    assert stores.queue.start_export(dead)  # then the worker died: the export stays running under its lease
    assert get_export(client_a, job.id, export["id"])["status"] == "running"

    assert run_worker(settings, stores) == ["succeeded"]  # claims it once the lease has expired
    done = stores.metadata.get_export(export["id"], job_id=job.id, project_id=tenants["a"].project_id)
    assert (done.status, done.attempts, done.lease_owner) == ("succeeded", 2, None)
    assert not stores.queue.complete_export(dead, status="failed", error={"code": "x", "message": "y"})
    assert get_export(client_a, job.id, export["id"])["file_id"] == done.file_id
    assert client_a.files.retrieve(done.file_id).bytes > 0


def test_an_export_create_retried_with_its_idempotency_key_makes_one_export(client_a, stores, tenants):
    job, _ = finished_job(stores, tenants["a"])
    key = {"Idempotency-Key": "export-once"}
    first = client_a.post(
        f"/fine_tuning/jobs/{job.id}/exports", body={"format": "adapter"}, cast_to=object, options={"headers": key}
    )
    again = client_a.post(
        f"/fine_tuning/jobs/{job.id}/exports", body={"format": "adapter"}, cast_to=object, options={"headers": key}
    )
    assert again == first
    assert [e["id"] for e in list_exports(client_a, job.id)["data"]] == [first["id"]]
    status, error = error_of(
        lambda: client_a.post(
            f"/fine_tuning/jobs/{job.id}/exports", body={"format": "gguf"}, cast_to=object, options={"headers": key}
        )
    )
    assert (status, error["code"]) == (409, "idempotency_key_reused")

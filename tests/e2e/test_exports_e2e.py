"""End to end: exports through a live `tunewright serve`, whose embedded training worker writes them.

The routes are driven with the openai SDK's generic `client.post`/`client.get` (they are Tunewright's), the file
is read through `/v1/files/{id}/content`, another tenant of the same server is refused, and `tunewright jobs export`
asks for a GGUF, waits and downloads it.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import openai
import pytest
from fixtures.exports import (
    create_export,
    error_of,
    get_export,
    gguf_fields,
    gguf_tensor_types,
    list_exports,
    wait_export,
)
from fixtures.server import TINY, VENV_BIN
from fixtures.training import wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@pytest.fixture(scope="module")
def trained(tiny_training_server):
    """A job of the server's default project trained on the tiny model by the server's own worker."""
    client = openai.OpenAI(base_url=tiny_training_server.base_url, api_key=tiny_training_server.key, max_retries=0)
    training = client.files.create(
        file=("train.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    done = wait_for_status(client, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    return client, done


def test_the_embedded_worker_writes_an_export_another_tenant_cannot_see(tiny_training_server, trained, tmp_path):
    client, job = trained
    export = create_export(client, job.id, format="adapter")
    done = wait_export(client, job.id, export["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    assert list_exports(client, job.id)["data"][0]["id"] == export["id"]
    archive = tmp_path / "adapter.tar"
    archive.write_bytes(client.files.content(done["file_id"]).content)
    with tarfile.open(archive) as tar:
        names = sorted(Path(member.name).name for member in tar.getmembers() if member.isfile())
    assert names == ["adapter_config.json", "adapter_model.safetensors"]

    other = openai.OpenAI(
        base_url=tiny_training_server.base_url, api_key=tiny_training_server.new_key("rival", "p"), max_retries=0
    )
    for call in (
        lambda: create_export(other, job.id, format="gguf"),
        lambda: list_exports(other, job.id),
        lambda: get_export(other, job.id, export["id"]),
        lambda: other.files.content(done["file_id"]),
    ):
        assert error_of(call)[0] == 404


def test_jobs_export_waits_for_a_gguf_and_downloads_it(tiny_training_server, trained, tmp_path):
    _, job = trained
    out = tmp_path / "model.gguf"
    run = subprocess.run(
        [
            str(VENV_BIN / "tunewright"),
            "jobs",
            "export",
            job.id,
            "--format",
            "gguf",
            "--quantization",
            "q8_0",
            "-o",
            str(out),
            "--poll",
            "0.2",
            "--base-url",
            tiny_training_server.base_url,
        ],
        env={**tiny_training_server.env, "TUNEWRIGHT_API_KEY": tiny_training_server.key},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert ": succeeded" in run.stderr
    assert f"to {out}" in run.stderr
    assert gguf_fields(out)["general.name"] == job.fine_tuned_model
    assert "Q8_0" in gguf_tensor_types(out).values()

    refused = subprocess.run(
        [str(VENV_BIN / "tunewright"), "jobs", "export", job.id, "--format", "merged", "--quantization", "q8_0"],
        env={
            **tiny_training_server.env,
            "TUNEWRIGHT_API_KEY": tiny_training_server.key,
            "OPENAI_BASE_URL": tiny_training_server.base_url,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1
    assert "HTTP 400" in refused.stderr
    assert "quantization" in refused.stderr

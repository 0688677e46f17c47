"""`tunewright jobs follow`: the real CLI against a live server, plus its terminal rendering and reconnects."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import pytest
from fixtures.server import free_port

from tunewright.clients.cli import jobs, remote
from tunewright.clients.cli.job_actions import grader, probe_loss
from tunewright.clients.cli.main import main
from tunewright.clients.cli.serve import DEFAULT_ORGANIZATION, DEFAULT_PROJECT
from tunewright.storage.events import make_event
from tunewright.storage.registry import open_stores
from tunewright.storage.settings import load_settings

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASE = "smollm2-135m-instruct"
ACTIVE = ("validating_files", "queued", "running", "paused")


@pytest.fixture
def api_key(monkeypatch):
    """Set the key `jobs follow` reads; returns a setter for the test's key."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)

    def use(key):
        monkeypatch.setenv("TUNEWRIGHT_API_KEY", key)

    return use


class LiveJobs:
    """Jobs on a live server: created over HTTP, driven to their end straight in its stores (no trainer runs)."""

    def __init__(self, server):
        self.server = server
        self.stores = open_stores(load_settings(server.env))
        organization = self.stores.metadata.find_organization(slug=DEFAULT_ORGANIZATION)
        self.project_id = self.stores.metadata.find_project(organization_id=organization.id, name=DEFAULT_PROJECT).id
        self.http = httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30
        )
        data = (ASSETS / "valid_chat.jsonl").read_bytes()
        self.file_id = self.http.post(
            "/files", files={"file": ("t.jsonl", data)}, data={"purpose": "fine-tune"}
        ).json()["id"]

    def create(self):
        response = self.http.post("/fine_tuning/jobs", json={"model": BASE, "training_file": self.file_id})
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def add(self, job_id, message, **kwargs):
        self.stores.metadata.add_event(make_event(job_id, self.project_id, message, **kwargs))

    def end(self, job_id, status, **changes):
        self.stores.metadata.transition_job(
            job_id,
            project_id=self.project_id,
            allowed=ACTIVE,
            status=status,
            event=make_event(job_id, self.project_id, f"Job {status}"),
            finished_at=int(time.time()),
            **changes,
        )

    def close(self):
        self.http.close()
        self.stores.close()


@pytest.fixture
def live_jobs(live_server):
    made = LiveJobs(live_server)
    yield made
    made.close()


def follow(*args):
    return main(["jobs", "follow", *args])


@pytest.mark.e2e
@pytest.mark.slow
def test_follow_prints_a_finished_jobs_events_and_exits_by_its_outcome(live_jobs, live_server, api_key, capsys):
    api_key(live_server.key)
    succeeded = live_jobs.create()
    live_jobs.add(
        succeeded,
        "Step 1/4: training loss=1.20",
        kind="metrics",
        data={"step": 1, "total_steps": 4, "train_loss": 1.2, "train_mean_token_accuracy": 0.5},
    )
    model = f"ft:{BASE}:default::abcd1234"
    live_jobs.end(succeeded, "succeeded", fine_tuned_model=model)
    failed = live_jobs.create()
    message = "training_file line 3: `messages` must be a list"
    live_jobs.end(failed, "failed", error={"code": "invalid_training_file", "message": message, "param": None})

    assert follow(succeeded, "--base-url", live_server.base_url) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"] info Created fine-tuning job: {succeeded}")
    assert out[0].startswith("[")
    assert out[1].endswith("] info Step 1/4: training loss=1.20"), "not a TTY: metrics are plain lines"
    assert out[2].endswith("] info Job succeeded")
    assert out[3:] == ["status: succeeded", f"fine-tuned model: {model}"]

    assert follow(failed, "--base-url", live_server.base_url) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["status: failed", f"error: {message}"]

    cancelled = live_jobs.create()
    assert live_jobs.http.post(f"/fine_tuning/jobs/{cancelled}/cancel").status_code == 200
    assert follow(cancelled, "--base-url", live_server.base_url) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "status: cancelled"


@pytest.mark.e2e
@pytest.mark.slow
def test_follow_of_an_unknown_job_or_with_a_bad_key_exits_1_with_the_servers_message(
    live_jobs, live_server, api_key, monkeypatch, capsys
):
    api_key(live_server.key)
    monkeypatch.setenv("OPENAI_BASE_URL", live_server.base_url)  # the flag's fallback, as for the openai SDK
    assert follow("ftjob-missing") == 1
    captured = capsys.readouterr()
    assert captured.err == "tunewright: jobs follow: HTTP 404: Could not find fine-tuning job: ftjob-missing\n"
    assert captured.out == ""

    job = live_jobs.create()
    api_key("sk-proj-not-a-key")
    assert follow(job) == 1
    err = capsys.readouterr().err
    assert err.startswith("tunewright: jobs follow: HTTP 401: ")
    assert err.count("\n") == 1


def test_follow_without_a_key_exits_2_naming_the_variables(monkeypatch, capsys):
    monkeypatch.delenv("TUNEWRIGHT_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert follow("ftjob-x") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "TUNEWRIGHT_API_KEY" in err
    assert "OPENAI_API_KEY" in err


def test_follow_reads_openai_api_key_and_reports_a_refused_connection_in_one_line(monkeypatch, capsys):
    monkeypatch.delenv("TUNEWRIGHT_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-proj-x")
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert follow("ftjob-x", "--base-url", url) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tunewright: jobs follow: cannot connect to {url}")
    assert err.count("\n") == 1


def sse(*frames):
    return "".join(f"data: {frame}\n\n" for frame in frames).encode()


def wire_event(number):
    return {
        "object": "fine_tuning.job.event",
        "id": f"ftevent-{number}",
        "created_at": 1_700_000_000 + number,
        "level": "info",
        "message": f"event {number}",
        "type": "message",
        "data": {},
    }


class ScriptedServer:
    """An httpx transport answering from a script, recording each events request's `after`."""

    def __init__(self, streams, job_status="succeeded"):
        self.streams = list(streams)
        self.job_status = job_status
        self.afters = []

    def __call__(self, request):
        if request.url.path.endswith("/events"):
            assert request.url.params["stream"] == "true"
            self.afters.append(request.url.params.get("after"))
            if not self.streams:
                return httpx.Response(503, json={"error": {"message": "down", "type": "x", "param": None}})
            return httpx.Response(200, content=self.streams.pop(0), headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"id": "ftjob-x", "status": self.job_status, "fine_tuned_model": "ft:m"})


def scripted(monkeypatch, server):
    def open_client(base_url, key):
        return httpx.Client(base_url=base_url, transport=httpx.MockTransport(server))

    monkeypatch.setattr(jobs, "BACKOFF_S", 0.0)
    monkeypatch.setattr(jobs, "open_client", open_client)


def test_a_dropped_stream_resumes_after_the_last_event(monkeypatch, api_key, capsys):
    api_key("sk-proj-x")
    server = ScriptedServer(
        [
            sse(json.dumps(wire_event(1)), json.dumps(wire_event(2))),  # ends without [DONE]
            b": keep-alive\n\n" + sse(json.dumps(wire_event(3)), "[DONE]"),
        ]
    )
    scripted(monkeypatch, server)
    assert follow("ftjob-x") == 0
    assert server.afters == [None, "ftevent-2"]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("] ", 1)[1] for line in lines[:3]] == ["info event 1", "info event 2", "info event 3"]
    assert lines[3:] == ["status: succeeded", "fine-tuned model: ft:m"]


def test_the_base_url_is_the_flag_then_openai_base_url_then_the_default(monkeypatch, api_key):
    api_key("sk-proj-x")
    server = ScriptedServer([sse("[DONE]")] * 3)
    used = []

    def open_client(base_url, key):
        used.append(base_url)
        return httpx.Client(base_url=base_url, transport=httpx.MockTransport(server))

    monkeypatch.setattr(jobs, "open_client", open_client)
    assert follow("ftjob-x") == 0
    monkeypatch.setenv("OPENAI_BASE_URL", "http://env.test/v1/")
    assert follow("ftjob-x") == 0
    assert follow("ftjob-x", "--base-url", "http://flag.test/v1") == 0
    assert used == [remote.DEFAULT_BASE_URL, "http://env.test/v1", "http://flag.test/v1"]


def test_a_stream_that_keeps_dropping_gives_up_with_exit_1(monkeypatch, api_key, capsys):
    api_key("sk-proj-x")
    error_frame = json.dumps({"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
    server = ScriptedServer([sse(error_frame)] * (jobs.RETRIES + 1))
    scripted(monkeypatch, server)
    assert follow("ftjob-x") == 1
    assert len(server.afters) == jobs.RETRIES + 1
    err = capsys.readouterr().err
    assert "dropped" in err
    assert "boom" in err


def test_metrics_redraw_one_progress_line_on_a_terminal():
    out = io.StringIO()
    printer = jobs.EventPrinter(out, tty=True)
    for step, loss in ((1, 2.0), (5, 1.25)):
        data = {"step": step, "total_steps": 10, "train_loss": loss, "train_mean_token_accuracy": 0.5}
        printer.show({**wire_event(step), "type": "metrics", "data": data})
    printer.show(wire_event(99))
    text = out.getvalue()
    redraws, last_line = text.split("\n", 1)
    assert redraws.count("\r") == 2
    assert redraws.rsplit("\r", 1)[1].startswith("step 5/10 [############............]  50%  loss 1.2500")
    assert "acc 0.5000" in redraws
    assert "valid" not in redraws, "valid_loss is optional and was not sent"
    assert last_line.endswith("] info event 99\n")


def test_progress_line_shows_validation_loss_and_survives_a_missing_total():
    assert jobs.progress_line({"step": 3, "total_steps": 3, "train_loss": 1, "valid_loss": 0.5}) == (
        f"step 3/3 [{'#' * jobs.BAR_WIDTH}] 100%  loss 1.0000  valid 0.5000"
    )
    assert jobs.progress_line({"step": 2}).startswith("step 2/? [....")


def test_the_probe_loss_column_reads_the_forgetting_check_against_the_base_models_loss():
    assert probe_loss({"probe_loss": 2.5, "probe_loss_base": 2.0}) == "2.5000 (+25.0%)"
    assert probe_loss({"probe_loss": 1.9, "probe_loss_base": 2.0}) == "1.9000 (-5.0%)"
    assert probe_loss({"probe_loss": 1.9}) == "1.9000"
    assert probe_loss({"train_loss": 1.0}) is None  # a job without the check


def test_a_grader_that_is_not_a_json_object_is_a_usage_error(tmp_path):
    for value in ("[1]", "{" * 100_000, str(tmp_path / "absent.json")):
        with pytest.raises(remote.UsageError, match="--grader"):
            grader(value)
    path = tmp_path / "grader.json"
    path.write_text('{"type": "string_check"}')
    assert grader(str(path)) == grader('{"type": "string_check"}') == {"type": "string_check"}

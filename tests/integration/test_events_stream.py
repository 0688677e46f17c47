"""`GET /v1/fine_tuning/jobs/{id}/events?stream=true`: server-sent events, oldest first, then `[DONE]`."""

from __future__ import annotations

import gc
import json
import threading
import time
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest
from fixtures.contract import schema_for, validate, validate_error, validate_operation
from litestar.testing import TestClient

from tunewright.api.app import create_app
from tunewright.api.fine_tuning import events_stream
from tunewright.clients.cli.serve import DEFAULT_ORGANIZATION, DEFAULT_PROJECT
from tunewright.storage.events import make_event
from tunewright.storage.registry import open_stores
from tunewright.storage.settings import load_settings

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASE = "smollm2-135m-instruct"
ACTIVE = ("validating_files", "queued", "running", "paused")


@pytest.fixture
def training_file(client_a):
    return client_a.files.create(file=("train.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune")


@pytest.fixture
def fast_polls(monkeypatch):
    monkeypatch.setattr(events_stream, "POLL_INTERVAL_S", 0.02)


def auth(tenant):
    return {"Authorization": f"Bearer {tenant.key}"}


def events_path(job_id):
    return f"/v1/fine_tuning/jobs/{job_id}/events"


def add_events(stores, job_id, project_id, *messages):
    events = [make_event(job_id, project_id, message) for message in messages]
    for event in events:
        stores.metadata.add_event(event)
    return events


def finish(stores, job_id, project_id, status="succeeded"):
    """Move the job to a terminal status with its closing event, as the worker does."""
    stores.metadata.transition_job(
        job_id,
        project_id=project_id,
        allowed=ACTIVE,
        status=status,
        event=make_event(job_id, project_id, f"The job has {status}"),
        finished_at=int(time.time()),
    )


def default_project_id(stores):
    """The project `tunewright serve` made on first start (its key is `live_server.key`)."""
    organization = stores.metadata.find_organization(slug=DEFAULT_ORGANIZATION)
    return stores.metadata.find_project(organization_id=organization.id, name=DEFAULT_PROJECT).id


def parse_frames(body):
    """The `data:` payloads of an event stream, in order, and the number of comment lines."""
    blocks = [block for block in body.split("\n\n") if block]
    assert body.endswith("\n\n"), body[-200:]
    data = [block.removeprefix("data: ") for block in blocks if block.startswith("data: ")]
    comments = [block for block in blocks if block.startswith(":")]
    assert len(data) + len(comments) == len(blocks), blocks
    return data, len(comments)


def streamed_events(response):
    """The events of a finished stream (every frame a valid `fine_tuning.job.event`), checking the `[DONE]`."""
    assert response.status_code == 200, response.text
    data, _ = parse_frames(response.text)
    assert data[-1] == "[DONE]"
    events = [json.loads(frame) for frame in data[:-1]]
    for event in events:
        validate(event, schema_for("FineTuningJobEvent"))
    return events


class StreamInBackground:
    """Runs one buffered stream request on a thread; `started` is set once the server has polled the store."""

    def __init__(self, monkeypatch, http, path, headers):
        self.polls = 0
        self.started = threading.Event()
        self.response = None
        poll = events_stream.poll

        def counting_poll(*args):
            result = poll(*args)
            self.polls += 1
            self.started.set()
            return result

        monkeypatch.setattr(events_stream, "poll", counting_poll)
        self.thread = threading.Thread(target=self._run, args=(http, path, headers), daemon=True)

    def _run(self, http, path, headers):
        self.response = http.get(path, params={"stream": "true"}, headers=headers)

    def __enter__(self):
        self.thread.start()
        assert self.started.wait(10), "the stream never polled the store"
        return self

    def __exit__(self, *exc_info):
        self.thread.join(15)
        assert not self.thread.is_alive(), "the stream did not end after the job did"


def test_a_finished_jobs_stream_is_every_event_oldest_first_then_done(client_a, http, stores, tenants, training_file):
    tenant = tenants["a"]
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    add_events(stores, job.id, tenant.project_id, "Files validated", "Fine-tuning job started")
    metrics = make_event(
        job.id,
        tenant.project_id,
        "Step 1/2: training loss=1.50",
        kind="metrics",
        data={"step": 1, "total_steps": 2, "train_loss": 1.5, "train_mean_token_accuracy": 0.25},
    )
    stores.metadata.add_event(metrics)
    finish(stores, job.id, tenant.project_id)

    response = http.get(events_path(job.id), params={"stream": "true"}, headers=auth(tenant))

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = streamed_events(response)
    assert [e["message"] for e in events] == [
        f"Created fine-tuning job: {job.id}",
        "Files validated",
        "Fine-tuning job started",
        "Step 1/2: training loss=1.50",
        "The job has succeeded",
    ]
    listed = http.get(events_path(job.id), headers=auth(tenant)).json()
    validate_operation(listed, "listFineTuningEvents")
    assert events == listed["data"][::-1], "a frame differs from the list's object for the same event"
    assert events[3]["type"] == "metrics"
    assert events[3]["data"]["train_loss"] == 1.5


def test_after_resumes_with_the_next_event(client_a, http, stores, tenants, training_file):
    tenant = tenants["a"]
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    first, second, _ = add_events(stores, job.id, tenant.project_id, "one", "two", "three")
    finish(stores, job.id, tenant.project_id, status="failed")

    resumed = http.get(events_path(job.id), params={"stream": "true", "after": first.id}, headers=auth(tenant))
    assert [e["message"] for e in streamed_events(resumed)] == ["two", "three", "The job has failed"]
    from_second = http.get(events_path(job.id), params={"stream": "true", "after": second.id}, headers=auth(tenant))
    assert [e["message"] for e in streamed_events(from_second)] == ["three", "The job has failed"]


def test_after_that_is_not_an_event_of_this_job_is_400_before_the_stream(
    client_a, http, stores, tenants, training_file
):
    tenant = tenants["a"]
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    other = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    (foreign_event,) = add_events(stores, other.id, tenant.project_id, "of the other job")
    for after in ("ftevent-missing", foreign_event.id):
        response = http.get(events_path(job.id), params={"stream": "true", "after": after}, headers=auth(tenant))
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("application/json")
        validate_error(response.json())
        assert response.json()["error"]["param"] == "after"
        listed = http.get(events_path(job.id), params={"after": after}, headers=auth(tenant))
        assert listed.json() == response.json(), "the stream and the list must refuse a cursor alike"


def test_another_projects_job_and_an_unknown_job_are_404_like_the_list(client_a, http, tenants, training_file):
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    for job_id, tenant in ((job.id, tenants["b"]), (job.id, tenants["a2"]), ("ftjob-missing", tenants["a"])):
        response = http.get(events_path(job_id), params={"stream": "true"}, headers=auth(tenant))
        assert response.status_code == 404
        validate_error(response.json())
        assert response.json()["error"]["code"] == "job_not_found"
        assert response.json() == http.get(events_path(job_id), headers=auth(tenant)).json()
    assert http.get(events_path(job.id), params={"stream": "true"}).status_code == 401


def test_events_written_while_streaming_are_delivered_before_done(
    client_a, http, stores, tenants, training_file, monkeypatch, fast_polls
):
    tenant = tenants["a"]
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    stores.metadata.transition_job(job.id, project_id=tenant.project_id, allowed=ACTIVE, status="running")

    with StreamInBackground(monkeypatch, http, events_path(job.id), auth(tenant)) as stream:
        for index in range(3):
            add_events(stores, job.id, tenant.project_id, f"late {index}")
            time.sleep(0.05)
        polls_before_finish = stream.polls
        finish(stores, job.id, tenant.project_id)

    assert polls_before_finish >= 2, "the events were written before the stream started polling"
    messages = [e["message"] for e in streamed_events(stream.response)]
    assert messages == [f"Created fine-tuning job: {job.id}", "late 0", "late 1", "late 2", "The job has succeeded"]


def test_a_silent_stream_sends_keep_alive_comments(
    client_a, http, stores, tenants, training_file, monkeypatch, fast_polls
):
    monkeypatch.setattr(events_stream, "KEEPALIVE_S", 0.05)
    tenant = tenants["a"]
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)

    with StreamInBackground(monkeypatch, http, events_path(job.id), auth(tenant)) as stream:
        time.sleep(0.3)
        finish(stores, job.id, tenant.project_id, status="cancelled")

    data, comments = parse_frames(stream.response.text)
    assert comments >= 2, stream.response.text
    assert ": keep-alive\n\n" in stream.response.text
    assert [json.loads(frame)["message"] for frame in data[:-1]][-1] == "The job has cancelled"
    assert data[-1] == "[DONE]"


def stream_until_first_frame(app, path, key):
    """Drive the ASGI app by hand: ask for the event stream, go away after its first frame; return what was sent."""
    sent = []

    async def run_until_disconnect():
        first_body = anyio.Event()
        requested = False

        async def receive():
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await first_body.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                first_body.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"stream=true",
            "root_path": "",
            "headers": [(b"host", b"testserver.local"), (b"authorization", f"Bearer {key}".encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver.local", 80),
            "state": {},
        }
        with anyio.fail_after(10):
            await app(scope, receive, send)

    anyio.run(run_until_disconnect)
    return sent


def test_a_client_disconnect_ends_the_stream_and_its_polling(app, http, tenants, client_a, training_file, fast_polls):
    """The client goes away after the first frame of a job that never ends."""
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    polls = []
    poll = events_stream.poll

    def counting_poll(*args):
        polls.append(time.monotonic())
        return poll(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events_stream, "poll", counting_poll)
        sent = stream_until_first_frame(app, events_path(job.id), tenants["a"].key)
        ended_at = len(polls)
        time.sleep(0.2)  # ten poll intervals: a loop still running would poll again
        assert len(polls) == ended_at, "the stream kept polling after the client left"
    assert sent[0]["status"] == 200
    first = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert first.startswith(b"data: ")
    assert json.loads(first.split(b"\n\n")[0].removeprefix(b"data: "))["id"].startswith("ftevent-")


def test_a_key_holds_at_most_its_open_streams_until_one_ends_or_its_client_leaves(
    settings, stores, tenants, client_a, training_file, monkeypatch, fast_polls
):
    app = create_app(msgspec.structs.replace(settings, max_event_streams_per_key=1), stores, sweep=False)
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    path, headers = events_path(job.id), auth(tenants["a"])
    opened = threading.Semaphore(0)
    acquire = events_stream.StreamSlots.acquire

    def signalling_acquire(slots, key_id):
        release = acquire(slots, key_id)
        opened.release()
        return release

    monkeypatch.setattr(events_stream.StreamSlots, "acquire", signalling_acquire)
    assert stream_until_first_frame(app, path, tenants["a"].key)[0]["status"] == 200  # then its client leaves
    with TestClient(app, base_url="http://testserver.local") as http:
        streaming = threading.Thread(
            target=http.get, args=(path,), kwargs={"params": {"stream": "true"}, "headers": headers}
        )
        streaming.start()
        assert opened.acquire(timeout=10)  # the stream whose client left
        assert opened.acquire(timeout=10)  # this one: the stream that left gave its slot back
        refused = http.get(path, params={"stream": "true"}, headers=headers)
        finish(stores, job.id, tenants["a"].project_id, status="cancelled")
        streaming.join(15)
        assert not streaming.is_alive()
        assert http.get(path, params={"stream": "true"}, headers=headers).status_code == 200
    assert refused.status_code == 429, refused.text
    validate_error(refused.json())
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_stream_dropped_before_its_first_frame_gives_its_slot_back(stores, tenants, client_a, training_file):
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    slots, tenant = events_stream.StreamSlots(1), tenants["a"]
    response = events_stream.event_stream(
        stores, slots, job.id, key_id=tenant.key_id, project_id=tenant.project_id, after=None
    )
    assert slots.open(tenant.key_id) == 1
    del response  # never sent: its frames never started
    gc.collect()
    assert slots.open(tenant.key_id) == 0


@pytest.mark.e2e
@pytest.mark.slow
def test_a_live_server_delivers_each_event_as_it_is_written(live_server):
    """Over real HTTP the frames arrive while the job runs, not buffered until it ends."""
    headers = {"Authorization": f"Bearer {live_server.key}"}
    with httpx.Client(base_url=live_server.base_url, headers=headers, timeout=30) as client:
        data = (ASSETS / "valid_chat.jsonl").read_bytes()
        file = client.post("/files", files={"file": ("t.jsonl", data)}, data={"purpose": "fine-tune"}).json()
        job = client.post("/fine_tuning/jobs", json={"model": BASE, "training_file": file["id"]}).json()
        stores = open_stores(load_settings(live_server.env))
        try:
            with client.stream("GET", f"/fine_tuning/jobs/{job['id']}/events", params={"stream": "true"}) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = (line for line in stream.iter_lines() if line.startswith("data: "))
                assert json.loads(next(lines).removeprefix("data: "))["message"].startswith("Created")
                project_id = default_project_id(stores)
                (late,) = add_events(stores, job["id"], project_id, "written while streaming")
                assert json.loads(next(lines).removeprefix("data: "))["id"] == late.id
                finish(stores, job["id"], project_id)
                assert json.loads(next(lines).removeprefix("data: "))["message"] == "The job has succeeded"
                assert next(lines) == "data: [DONE]"
                assert next(lines, None) is None
        finally:
            stores.close()


def test_a_failure_after_the_first_frame_is_one_error_frame_then_close(
    client_a, http, tenants, training_file, monkeypatch, fast_polls
):
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    poll = events_stream.poll
    calls = []

    def failing_second_poll(*args):
        calls.append(args)
        if len(calls) > 1:
            raise RuntimeError("the database went away")
        return poll(*args)

    monkeypatch.setattr(events_stream, "poll", failing_second_poll)
    response = http.get(events_path(job.id), params={"stream": "true"}, headers=auth(tenants["a"]))
    assert response.status_code == 200
    data, _ = parse_frames(response.text)
    assert json.loads(data[0])["message"].startswith("Created fine-tuning job")
    error = json.loads(data[-1])
    validate_error(error)
    assert error["error"]["type"] == "server_error"
    assert "database" not in response.text, "no internals on the wire"
    assert len(data) == 2

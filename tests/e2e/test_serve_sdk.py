"""End to end: `tunewright serve` as a subprocess, driven by the real openai SDK with two tenants."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from tunewright.storage.metadata_tenants import KEY_CACHE_TTL_S

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASE = "smollm2-135m-instruct"


def client(server, key):
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


def test_two_tenants_run_the_whole_control_plane_flow(live_server, tmp_path):
    a = client(live_server, live_server.key)
    b = client(live_server, live_server.new_key("globex", "research"))
    data = (ASSETS / "valid_chat.jsonl").read_bytes()

    # files
    uploaded = a.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert a.files.retrieve(uploaded.id).status == "processed"
    assert a.files.content(uploaded.id).read() == data
    with pytest.raises(openai.BadRequestError) as err:
        a.files.create(file=("bad.jsonl", (ASSETS / "bad_json_line14.jsonl").read_bytes()), purpose="fine-tune")
    assert "line 14" in err.value.message

    # uploads, chunked exactly as the SDK's helper does it
    path = tmp_path / "big.jsonl"
    path.write_bytes(data * 40)
    upload = a.uploads.upload_file_chunked(
        file=path, mime_type="application/jsonl", purpose="fine-tune", part_size=4096
    )
    assert upload.status == "completed"
    assert a.files.content(upload.file.id).read() == data * 40

    # jobs
    job = a.fine_tuning.jobs.create(model=BASE, training_file=uploaded.id, suffix="e2e", metadata={"run": "1"})
    assert job.status == "validating_files"
    assert [j.id for j in a.fine_tuning.jobs.list(metadata={"run": "1"})] == [job.id]
    assert a.fine_tuning.jobs.list_events(job.id).data[0].message.startswith("Created fine-tuning job")
    assert a.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as err:
        a.fine_tuning.jobs.cancel(job.id)
    assert err.value.code == "invalid_job_state"

    # models
    assert BASE in [m.id for m in a.models.list()]

    # tenant isolation: nothing of a's is visible to b
    assert b.files.list().data == []
    assert b.fine_tuning.jobs.list().data == []
    for call, arg in ((b.files.retrieve, uploaded.id), (b.fine_tuning.jobs.retrieve, job.id)):
        with pytest.raises(openai.NotFoundError):
            call(arg)
    with pytest.raises(openai.BadRequestError) as err:
        b.fine_tuning.jobs.create(model=BASE, training_file=uploaded.id)
    assert err.value.param == "training_file"

    # a key revoked by another process (the CLI) stops working within the server's key-cache bound
    keys = live_server.cli("keys", "list")
    assert live_server.key not in keys
    key_id = next(line.split()[0] for line in keys.splitlines() if "globex" in line)
    live_server.cli("keys", "revoke", key_id)
    time.sleep(KEY_CACHE_TTL_S)
    with pytest.raises(openai.AuthenticationError):
        b.files.list()


def test_operational_endpoints(live_server):
    with urllib.request.urlopen(live_server.url + "/healthz") as response:
        assert json.load(response) == {"status": "ok"}
    with urllib.request.urlopen(live_server.url + "/metrics") as response:
        assert b"tunewright_http_requests_total" in response.read()
    with urllib.request.urlopen(live_server.url + "/openapi.json") as response:
        assert "/v1/fine_tuning/jobs" in json.load(response)["paths"]

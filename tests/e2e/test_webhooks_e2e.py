"""End to end: `tunewright serve` delivers signed webhooks, and a restart loses none of those still owed."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest
from fixtures.server import first_key, server_env, start_serve, stop_server
from fixtures.webhooks import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WEBHOOKS = {
    "TUNEWRIGHT_WEBHOOK_ALLOW_PRIVATE": "true",
    "TUNEWRIGHT_WEBHOOK_RETRY_BASE_S": "0.05",
    "TUNEWRIGHT_WEBHOOK_RETRY_MAX_S": "0.2",
    "TUNEWRIGHT_WEBHOOK_POLL_S": "0.1",
}


def test_serve_delivers_signed_events_and_a_restart_loses_none(tmp_path: Path, receiver: Receiver) -> None:
    env = server_env(tmp_path, WEBHOOKS)
    log = tmp_path / "serve.log"
    url, process = start_serve(env, log)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key=first_key(log), max_retries=0)
        endpoint = client.webhooks.create(name="backend", url=receiver.url(), event_types=["fine_tuning.job.cancelled"])
        training = client.files.create(
            file=("train.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune"
        )

        receiver.fail_next(502)
        first = client.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=training.id)
        client.fine_tuning.jobs.cancel(first.id)
        failed, delivered = receiver.wait_for(2)
        assert (failed.status, delivered.status) == (502, 200)
        assert failed.headers["webhook-id"] == delivered.headers["webhook-id"]
        event = client.webhooks.unwrap(delivered.body, delivered.headers, secret=endpoint.signing_secret)
        assert (event.type, event.data.id) == ("fine_tuning.job.cancelled", first.id)

        receiver.always = 503  # the backend goes down; then so does the API
        second = client.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=training.id)
        client.fine_tuning.jobs.cancel(second.id)
        receiver.wait_for(3)
    finally:
        stop_server(process)

    owed = receiver.received[2]
    receiver.always = None
    url, process = start_serve(env, tmp_path / "serve-again.log")
    try:
        deadline = time.monotonic() + 30
        while not any(r.status == 200 for r in receiver.received[3:]):
            assert time.monotonic() < deadline, "the owed delivery never arrived after the restart"
            time.sleep(0.05)
        arrived = next(r for r in receiver.received[3:] if r.status == 200)
        assert arrived.headers["webhook-id"] == owed.headers["webhook-id"]
        client = openai.OpenAI(base_url=url + "/v1", api_key=first_key(log), max_retries=0)
        event = client.webhooks.unwrap(arrived.body, arrived.headers, secret=endpoint.signing_secret)
        assert (event.type, event.data.id) == ("fine_tuning.job.cancelled", second.id)
    finally:
        stop_server(process)

"""`POST /v1/fine_tuning/jobs/estimate` through the real openai SDK, on both backends.

The estimate's `trained_tokens` is what the finished job bills; its cost is those tokens times the training price;
its errors are job creation's; and it tells, as job creation enforces, whether the spend limit allows the job.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from fixtures.app import make_key
from fixtures.metering import priced_settings, store_usage
from fixtures.training import TINY, run_worker
from litestar.testing import TestClient

from tunewright.clients.cli import estimate as estimate_cli
from tunewright.clients.cli.main import main

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TRAINING_PRICE = 3.00
PRICES = {TINY: {"input": 0.10, "training": TRAINING_PRICE}}
AUTO_EPOCHS = {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}}


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Any:
    return priced_settings(request, tmp_path, backend, tiny_dir, PRICES)


def upload(client: openai.OpenAI, name: str = "valid_chat.jsonl") -> str:
    return client.files.create(file=(name, (ASSETS / name).read_bytes()), purpose="fine-tune").id


def estimate(client: openai.OpenAI, **body: Any) -> dict[str, Any]:
    return client.post("/fine_tuning/jobs/estimate", body=body, cast_to=object)  # type: ignore[return-value]


def test_the_estimate_is_what_the_finished_job_bills(client_a, stores, settings):
    training = upload(client_a)
    body = {"model": TINY, "training_file": training, "method": AUTO_EPOCHS}
    first = estimate(client_a, **body)
    assert first["object"] == "fine_tuning.job.estimate"
    assert (first["model"], first["training_file"], first["validation_file"]) == (TINY, training, None)
    assert first["examples"] == 12
    assert first["n_epochs"] == 8  # auto: min(25, 100 // 12), as the worker resolves it
    assert first["method"]["supervised"]["hyperparameters"]["n_epochs"] == 8
    assert first["trained_tokens"] == first["tokens_per_epoch"] * 8
    assert first["estimated_cost"] == {
        "value": pytest.approx(first["trained_tokens"] * TRAINING_PRICE / 1e6),
        "currency": "usd",
    }
    assert first["within_spend_limit"] is True
    assert first["estimated_duration_seconds"] == math.ceil(first["trained_tokens"] / 1000)
    assert any("assumes 1,000 trained tokens per second" in w for w in first["warnings"])
    settings.estimate_tokens_per_s = 7.5  # TUNEWRIGHT_ESTIMATE_TOKENS_PER_S, read by the app from its settings
    slow = estimate(client_a, **body)
    assert slow["trained_tokens"] == first["trained_tokens"]
    assert slow["estimated_duration_seconds"] == math.ceil(first["trained_tokens"] / 7.5)
    assert any("assumes 7.5 trained tokens per second" in w for w in slow["warnings"])

    job = client_a.fine_tuning.jobs.create(**body)
    assert run_worker(settings, stores) == ["succeeded"]
    done = client_a.fine_tuning.jobs.retrieve(job.id)
    assert done.trained_tokens == first["trained_tokens"]
    assert done.hyperparameters.n_epochs == first["n_epochs"]

    again = estimate(client_a, **body)  # a job of the model has finished: its measured throughput counts
    assert not any("assumes" in w for w in again["warnings"])
    tokens, seconds, jobs = stores.metadata.measured_throughput(TINY, jobs=20)
    assert (tokens, jobs) == (done.trained_tokens, 1)
    assert again["estimated_duration_seconds"] == math.ceil(again["trained_tokens"] / (tokens / seconds))


def test_truncation_to_the_context_is_counted_and_warned(client_a, settings):
    lines = [
        json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a " * n}]})
        for i, n in enumerate([3] * 9 + [400])
    ]
    long = client_a.files.create(file=("long.jsonl", "\n".join(lines).encode()), purpose="fine-tune").id
    settings.max_context_tokens = 64
    result = estimate(client_a, model=TINY, training_file=long, hyperparameters={"n_epochs": 1})
    (warning,) = [w for w in result["warnings"] if "truncated" in w]
    assert "1 examples are longer than the context of 64 tokens" in warning
    assert "(lines 10)" in warning
    assert result["tokens_per_epoch"] < 9 * 64 + 64


def bodies(client: openai.OpenAI, other_project_file: str) -> list[dict[str, Any]]:
    good = upload(client)
    return [
        {"model": "no-such-model", "training_file": good},
        {"model": TINY},
        {"model": TINY, "training_file": "file-nope"},
        {"model": TINY, "training_file": other_project_file},
        {"model": TINY, "training_file": good, "hyperparameters": {"n_epochs": 0}},
        {"model": TINY, "training_file": good, "surprise": 1},
        {"model": TINY, "training_file": upload(client, "bad_role.jsonl")},
        {"model": TINY, "training_file": good, "validation_file": upload(client, "missing_assistant.jsonl")},
    ]


def test_bad_bodies_get_the_errors_job_creation_gives(client_a, client_b, http, tenants):
    headers = {"Authorization": f"Bearer {tenants['a'].key}"}
    for body in bodies(client_a, upload(client_b)):
        created = http.post("/v1/fine_tuning/jobs", json=body, headers=headers)
        estimated = http.post("/v1/fine_tuning/jobs/estimate", json=body, headers=headers)
        assert created.status_code == 400, created.text
        assert (estimated.status_code, estimated.json()) == (created.status_code, created.json()), body


def test_the_estimate_says_whether_the_spend_limit_allows_it_and_creation_enforces_it(client_a, http, stores, tenants):
    a = tenants["a"]
    admin = make_key(stores, organization_id=a.organization_id, project_id=None, kind="admin").secret_hash
    body = {"model": TINY, "training_file": upload(client_a), "method": AUTO_EPOCHS}
    cost_cents = estimate(client_a, **body)["estimated_cost"]["value"] * 100
    store_usage(stores, a, int(time.time()), 1_000_000, 0)  # 10 cents spent this month

    def limit(cents: int) -> None:
        response = http.post(
            f"/v1/organization/projects/{a.project_id}/spend_limit",
            json={"threshold_amount": cents, "currency": "USD", "interval": "month"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert response.status_code == 200, response.text

    limit(10 + math.floor(cost_cents))  # less than 10 cents + the job's cost is left... barely
    assert estimate(client_a, **body)["within_spend_limit"] is False
    with pytest.raises(openai.RateLimitError) as err:
        client_a.fine_tuning.jobs.create(**body)
    assert err.value.code == "insufficient_quota"
    assert "estimated cost" in err.value.response.json()["error"]["message"]
    limit(11 + math.ceil(cost_cents))
    assert estimate(client_a, **body)["within_spend_limit"] is True
    assert client_a.fine_tuning.jobs.create(**body).status == "validating_files"


def test_the_cli_prints_the_estimate_as_a_table_and_deletes_its_upload(app, stores, tenants, monkeypatch, capsys):
    key = tenants["a"].key
    client = TestClient(app, base_url="http://testserver.local/v1")
    client.headers["Authorization"] = f"Bearer {key}"
    monkeypatch.setattr(estimate_cli, "open_client", lambda base_url, secret: client)
    monkeypatch.setenv("TUNEWRIGHT_API_KEY", key)
    path = str(ASSETS / "valid_chat.jsonl")

    assert main(["jobs", "estimate", path, "--model", TINY, "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    for row in (r"epochs +2", r"examples +12", r"estimated cost +0\.\d{4} USD", r"within spend limit +yes"):
        assert re.search(f"^{row}$", out, re.MULTILINE), (row, out)
    assert "warning: No job of tiny-llama has finished" in out
    assert (
        stores.metadata.list_files(
            project_id=tenants["a"].project_id, purpose=None, after=None, limit=9, order="asc"
        ).items
        == []
    )

    assert main(["jobs", "estimate", path, "--model", "no-such-model"]) == 1
    assert "HTTP 400" in capsys.readouterr().err

"""The training worker on the tiny model: jobs created with the openai SDK validate, train, publish and recover.

Every test runs on SQLite + local files and on PostgreSQL + S3 (moto over HTTP). Tests that act mid-training
wait for the k-th metrics event, never for wall time; comparisons are between two runs in one test.
"""

from __future__ import annotations

import csv
import io
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from fixtures.contract import validate_operation
from fixtures.models import share_smollm2
from fixtures.training import (
    TINY,
    BackgroundWorker,
    adapter_tensors,
    metrics_events,
    read_blob,
    run_worker,
    training_settings,
    wait_for_metrics,
    worker_process,
)

from tunewright.modeling.dataset import tokenize_dataset
from tunewright.modeling.loading import load_tokenizer
from tunewright.storage.errors import NotFound
from tunewright.storage.keys import adapter_blob_prefix, resume_blob_key

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Any:
    return training_settings(request, tmp_path, backend, tiny_dir)


def upload(client: Any, name: str, data: bytes | None = None) -> Any:
    body = data if data is not None else (ASSETS / name).read_bytes()
    return client.files.create(file=(name, body), purpose="fine-tune")


def create(client: Any, training: Any, *, epochs: int = 2, batch_size: int = 4, **extra: Any) -> Any:
    method_type = extra.pop("method_type", "supervised")
    hyper = {"n_epochs": epochs, "batch_size": batch_size, **extra.pop("hyper", {})}
    return client.fine_tuning.jobs.create(
        model=extra.pop("model", TINY),
        training_file=training.id,
        method={"type": method_type, method_type: {"hyperparameters": hyper}},
        **extra,
    )


def all_events(client: Any, job_id: str) -> list[Any]:
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))  # every page


def usage_steps(stores: Any, job_id: str, project_id: str) -> list[int]:
    """The steps a job's training usage billed, in order (each at most once: they are the rows' key)."""
    return [row.step for row in stores.metadata.list_training_usage(job_id, project_id=project_id)]


def usage_tokens(stores: Any, job_id: str, project_id: str) -> int:
    """The tokens a job's training usage billed."""
    return sum(row.trained_tokens for row in stores.metadata.list_training_usage(job_id, project_id=project_id))


def billed_tokens(tiny_dir: Path, name: str, epochs: int, method: str = "supervised") -> int:
    """What the job must bill, computed independently of the worker: the file's tokens times the epochs."""
    lines = (ASSETS / name).read_bytes().splitlines()
    data = tokenize_dataset(lines, load_tokenizer(tiny_dir), param="training_file", method=method, max_tokens=10_000)
    return data.total_tokens * epochs


def test_a_job_trains_and_publishes_its_model_results_and_checkpoints(
    client_a, http, stores, settings, tenants, tiny_dir
):
    training = upload(client_a, "valid_chat.jsonl")
    job = create(client_a, training, epochs=2, batch_size=4, suffix="math")
    assert run_worker(settings, stores) == ["succeeded"]

    done = client_a.fine_tuning.jobs.retrieve(job.id)
    raw = http.get(f"/v1/fine_tuning/jobs/{job.id}", headers={"Authorization": f"Bearer {tenants['a'].key}"}).json()
    validate_operation(raw, "retrieveFineTuningJob")
    assert done.status == "succeeded"
    assert done.fine_tuned_model == f"ft:{TINY}:acme:math:{done.fine_tuned_model.rsplit(':', 1)[1]}"
    assert done.trained_tokens == billed_tokens(tiny_dir, "valid_chat.jsonl", 2)
    assert done.trained_tokens == usage_tokens(stores, job.id, tenants["a"].project_id)
    assert usage_steps(stores, job.id, tenants["a"].project_id) == [1, 2, 3, 4, 5, 6]
    assert done.finished_at is not None
    assert done.error is None
    assert done.hyperparameters.n_epochs == 2
    assert done.method.supervised.hyperparameters.learning_rate_multiplier not in (None, "auto")

    events = all_events(client_a, job.id)
    messages = [event.message for event in events]
    assert any(message.startswith("Files validated: 12 training examples") for message in messages)
    assert "Fine-tuning job started" in messages
    assert messages[-1] == "The job has successfully completed"
    metrics = [event for event in events if event.type == "metrics"]
    assert [event.data["step"] for event in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(event.data["total_steps"] == 6 for event in metrics)
    assert metrics[0].message.startswith("Step 1/6: training loss=")

    (result_id,) = done.result_files
    result = client_a.files.retrieve(result_id)
    assert result.purpose == "fine-tune-results"
    rows = list(csv.reader(io.StringIO(client_a.files.content(result_id).text)))
    assert rows[0][:5] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [row[0] for row in rows[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert [float(row[1]) for row in rows[1:]] == pytest.approx([event.data["train_loss"] for event in metrics])

    checkpoints = client_a.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [6, 3]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-6"
    assert checkpoints[0].metrics.train_loss == pytest.approx(metrics[-1].data["train_loss"])
    models = {model.id for model in client_a.models.list().data}
    assert done.fine_tuned_model in models
    assert client_a.models.retrieve(checkpoints[1].fine_tuned_model_checkpoint).id.endswith(":ckpt-step-3")

    with pytest.raises(NotFound):
        read_blob(stores, resume_blob_key(tenants["a"].project_id, job.id))  # deleted once the job ended


def test_the_published_adapter_is_standard_peft_and_reloads_with_the_same_weights(
    client_a, stores, settings, tenants, tiny_dir, tmp_path
):
    from peft import PeftModel

    from tunewright.modeling.loading import load_model

    job = create(client_a, upload(client_a, "valid_chat.jsonl"), epochs=1)
    run_worker(settings, stores)
    prefix = adapter_blob_prefix(tenants["a"].project_id, job.id, "final")
    directory = tmp_path / "adapter"
    directory.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (directory / name).write_bytes(read_blob(stores, f"{prefix}/{name}"))
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["r"] == 16
    model = PeftModel.from_pretrained(load_model(tiny_dir), directory)
    stored = adapter_tensors(stores, prefix)
    loaded = {name: tensor for name, tensor in model.state_dict().items() if "lora_" in name}
    assert len(stored) == len(loaded) > 0
    assert any(float(tensor.abs().sum()) > 0 for name, tensor in stored.items() if "lora_B" in name)


def test_validation_file_metrics_reach_events_csv_and_checkpoints(client_a, stores, settings):
    training = upload(client_a, "valid_chat.jsonl")
    validation = upload(client_a, "valid_chat.jsonl")
    job = create(client_a, training, epochs=2, validation_file=validation.id)
    assert run_worker(settings, stores) == ["succeeded"]
    metrics = [event for event in all_events(client_a, job.id) if event.type == "metrics"]
    # eval_every_steps=2 on a sample, and the whole file at each epoch end (steps 3 and 6)
    assert [event.data.get("valid_loss") is not None for event in metrics] == [False, True, True, True, False, True]
    assert "full_valid_loss" in metrics[2].data
    assert "full_valid_loss" in metrics[5].data
    checkpoint = client_a.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    assert checkpoint.metrics.full_valid_loss == pytest.approx(metrics[5].data["full_valid_loss"])


def test_a_large_file_breaking_a_format_rule_fails_in_the_worker_with_the_line(client_a, stores, settings, tenants):
    settings.sync_validate_max_bytes = 0  # every file is "large": the worker checks it
    job = create(client_a, upload(client_a, "missing_assistant.jsonl"))
    assert job.status == "validating_files"
    assert run_worker(settings, stores) == ["failed"]
    failed = client_a.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed"
    assert failed.error.code == "invalid_training_file"
    assert failed.error.param == "training_file"
    assert failed.error.message.startswith("training_file line ")
    assert failed.trained_tokens is None  # it trained nothing, so it bills nothing
    assert usage_steps(stores, job.id, tenants["a"].project_id) == []
    assert failed.fine_tuned_model is None
    assert all_events(client_a, job.id)[-1].level == "error"


def test_a_value_echoed_from_the_data_with_control_characters_is_stored_escaped(client_a, stores, settings):
    settings.sync_validate_max_bytes = 0  # the worker checks the file and stores the message
    bad = (
        b'{"messages": [{"role": "us\\u0000er\\n", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
        b'{"messages": [{"role": "user", "content": "a", "k\\u0000": 1}, {"role": "assistant", "content": "b"}]}\n'
    )
    job = create(client_a, upload(client_a, "t.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes() + bad))
    assert run_worker(settings, stores) == ["failed"]
    failed = client_a.fine_tuning.jobs.retrieve(job.id)
    assert failed.error.code == "invalid_training_file"
    assert "(got 'us\\u0000er\\u000a')" in failed.error.message
    assert "messages[0].k\\u0000 is not allowed" in failed.error.message
    assert all_events(client_a, job.id)[-1].message == failed.error.message


def test_an_example_with_every_target_cut_by_the_context_fails_naming_lines(client_a, stores, settings):
    settings.max_context_tokens = 8  # the system and user turns alone are longer
    job = create(client_a, upload(client_a, "valid_chat.jsonl"))
    assert run_worker(settings, stores) == ["failed"]
    failed = client_a.fine_tuning.jobs.retrieve(job.id)
    assert failed.error.code == "invalid_training_file"
    assert "line 1" in failed.error.message


def test_long_examples_are_truncated_with_a_warning_naming_the_lines(client_a, stores, settings):
    lines = [
        json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a " * n}]})
        for i, n in enumerate([3] * 9 + [400])
    ]
    settings.max_context_tokens = 64
    job = create(client_a, upload(client_a, "long.jsonl", "\n".join(lines).encode()), epochs=1)
    assert run_worker(settings, stores) == ["succeeded"]
    warnings = [event for event in all_events(client_a, job.id) if event.level == "warn"]
    assert len(warnings) == 1
    assert "1 examples are longer than the context of 64 tokens" in warnings[0].message
    assert "(lines 10)" in warnings[0].message


def test_cancel_mid_training_stops_and_keeps_no_model(client_a, stores, settings, tenants):
    job = create(client_a, upload(client_a, "valid_chat.jsonl"), epochs=25, batch_size=2)
    worker = BackgroundWorker(settings, stores)
    wait_for_metrics(stores, job.id, tenants["a"].project_id, 7)  # epochs are 6 steps: a checkpoint exists
    running = client_a.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running"
    assert running.estimated_finish is not None
    client_a.fine_tuning.jobs.cancel(job.id)
    assert worker.join() == "cancelled"
    cancelled = client_a.fine_tuning.jobs.retrieve(job.id)
    assert cancelled.status == "cancelled"
    assert cancelled.fine_tuned_model is None
    recorded = metrics_events(stores, job.id, tenants["a"].project_id)
    assert len(recorded) < 150
    # It bills the steps it recorded before the cancel, and its trained_tokens say so.
    assert usage_steps(stores, job.id, tenants["a"].project_id) == [event.data["step"] for event in recorded]
    assert cancelled.trained_tokens == usage_tokens(stores, job.id, tenants["a"].project_id) > 0
    assert any(e.message.startswith("Checkpoint created at step 6") for e in all_events(client_a, job.id))
    assert client_a.fine_tuning.jobs.checkpoints.list(job.id).data == []
    assert [model.id for model in client_a.models.list().data if model.id.startswith("ft:")] == []
    with pytest.raises(NotFound):
        read_blob(stores, resume_blob_key(tenants["a"].project_id, job.id))


def test_pause_then_resume_reaches_the_same_adapter_as_an_uninterrupted_run(client_a, stores, settings, tenants):
    training = upload(client_a, "valid_chat.jsonl")
    straight = create(client_a, training, epochs=4, batch_size=2, seed=11)
    assert run_worker(settings, stores) == ["succeeded"]

    paused = create(client_a, training, epochs=4, batch_size=2, seed=11)
    worker = BackgroundWorker(settings, stores)
    wait_for_metrics(stores, paused.id, tenants["a"].project_id, 4)
    assert client_a.fine_tuning.jobs.pause(paused.id).status == "paused"
    assert worker.join() == "paused"
    steps_before = len(metrics_events(stores, paused.id, tenants["a"].project_id))
    assert steps_before < 24
    client_a.fine_tuning.jobs.resume(paused.id)
    assert run_worker(settings, stores) == ["succeeded"]

    messages = [event.message for event in all_events(client_a, paused.id)]
    assert f"Resumed from step {steps_before}/24" in messages
    project = tenants["a"].project_id
    a = adapter_tensors(stores, adapter_blob_prefix(project, straight.id, "final"))
    b = adapter_tensors(stores, adapter_blob_prefix(project, paused.id, "final"))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].equal(b[name]), name
    done = client_a.fine_tuning.jobs.retrieve(paused.id)
    assert done.trained_tokens == client_a.fine_tuning.jobs.retrieve(straight.id).trained_tokens
    assert usage_steps(stores, paused.id, project) == list(range(1, 25))  # the step the pause cut included
    assert done.trained_tokens == usage_tokens(stores, paused.id, project)
    curve = [event.data["train_loss"] for event in metrics_events(stores, straight.id, project)]
    resumed = [event.data["train_loss"] for event in metrics_events(stores, paused.id, project)]
    assert resumed == curve


def test_a_killed_worker_loses_nothing_and_tokens_are_counted_once(
    client_a, stores, settings, tenants, tmp_path, tiny_dir, smollm2_import
):
    job = create(client_a, upload(client_a, "valid_chat.jsonl"), epochs=25, batch_size=2)
    share_smollm2(settings.data_path, smollm2_import)  # the worker's import at start has nothing to do
    process = worker_process(settings, tmp_path / "worker.log")
    try:
        wait_for_metrics(stores, job.id, tenants["a"].project_id, 8, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert client_a.fine_tuning.jobs.retrieve(job.id).status == "running"
    assert run_worker(settings, stores) == ["succeeded"]  # claims it once the lease expires
    messages = [event.message for event in all_events(client_a, job.id)]
    resumed = [message for message in messages if message.startswith("Resumed from step ")]
    assert len(resumed) == 1
    assert int(resumed[0].split()[3].split("/")[0]) >= 3  # resume points every 3 steps
    done = client_a.fine_tuning.jobs.retrieve(job.id)
    assert done.trained_tokens == billed_tokens(tiny_dir, "valid_chat.jsonl", 25)
    # The steps the killed worker did after its last resume point were trained again, and billed once.
    project = tenants["a"].project_id
    assert usage_steps(stores, job.id, project) == list(range(1, 151))
    assert done.trained_tokens == usage_tokens(stores, job.id, project)
    assert len(metrics_events(stores, job.id, project)) >= 150


def test_sigterm_finishes_the_step_and_gives_the_job_back(
    client_a, stores, settings, tenants, tmp_path, smollm2_import
):
    job = create(client_a, upload(client_a, "valid_chat.jsonl"), epochs=25, batch_size=2)
    share_smollm2(settings.data_path, smollm2_import)
    process = worker_process(settings, tmp_path / "worker.log")
    wait_for_metrics(stores, job.id, tenants["a"].project_id, 3, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, (tmp_path / "worker.log").read_text()
    assert client_a.fine_tuning.jobs.retrieve(job.id).status == "queued"
    assert read_blob(stores, resume_blob_key(tenants["a"].project_id, job.id))
    messages = [event.message for event in all_events(client_a, job.id)]
    assert any(message.startswith("The worker is stopping") for message in messages)
    assert run_worker(settings, stores) == ["succeeded"]


def test_dpo_jobs_train_with_the_reward_margin_in_their_events(client_a, stores, settings):
    job = create(client_a, upload(client_a, "valid_dpo.jsonl"), method_type="dpo", epochs=2, batch_size=2)
    assert run_worker(settings, stores) == ["succeeded"]
    done = client_a.fine_tuning.jobs.retrieve(job.id)
    assert done.method.dpo.hyperparameters.beta == pytest.approx(0.1)
    metrics = [event for event in all_events(client_a, job.id) if event.type == "metrics"]
    assert metrics and all("reward_margin" in event.data for event in metrics)
    assert "reward margin=" in metrics[-1].message


def test_a_job_continues_from_a_fine_tuned_model_of_the_project(client_a, stores, settings, tenants):
    training = upload(client_a, "valid_chat.jsonl")
    first = create(client_a, training, epochs=1)
    run_worker(settings, stores)
    parent = client_a.fine_tuning.jobs.retrieve(first.id).fine_tuned_model
    second = create(client_a, training, epochs=1, model=parent)
    assert run_worker(settings, stores) == ["succeeded"]
    child = client_a.fine_tuning.jobs.retrieve(second.id)
    assert child.fine_tuned_model.startswith(f"ft:{TINY}:acme::")
    project = tenants["a"].project_id
    parent_weights = adapter_tensors(stores, adapter_blob_prefix(project, first.id, "final"))
    child_first = metrics_events(stores, second.id, project)[0].data["train_loss"]
    first_first = metrics_events(stores, first.id, project)[0].data["train_loss"]
    assert child_first < first_first  # it started from the trained adapter, not from scratch
    assert parent_weights

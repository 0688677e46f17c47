"""The forgetting check and early stopping, through the openai SDK and a worker on the tiny model.

Every test runs on SQLite + local files and on PostgreSQL + S3 (moto over HTTP). Numbers are never golden: each
test compares figures of one run with each other (the best checkpoint is the one with the lowest validation loss,
a warning is there exactly when the probe loss rose), or two runs of one test (a resumed run against an
uninterrupted one).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import openai
import pytest
from fixtures.contract import validate_error, validate_operation
from fixtures.training import (
    TINY,
    adapter_tensors,
    make_worker,
    metrics_events,
    read_blob,
    run_worker,
    training_settings,
)

from tunewright.storage.keys import adapter_blob_prefix
from tunewright.trainer.publish import RESULTS_COLUMNS
from tunewright.trainer.session import Session

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WORDS = ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "the", "weather"]
WORDS += ["today", "is", "sunny", "and", "bright"]
# Training on tests/assets/valid_chat.jsonl (sums answered with digits) with a large learning rate and LoRA scale
# makes a validation file of words get worse after the first epoch: early stopping has something to stop.
AGGRESSIVE = {"learning_rate_multiplier": 10, "lora_alpha": 512}


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Any:
    return training_settings(request, tmp_path, backend, tiny_dir)


def chat_lines(pairs: list[tuple[str, str]]) -> bytes:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    return "\n".join(json.dumps(row) for row in rows).encode()


def upload(client: Any, data: bytes) -> Any:
    return client.files.create(file=("data.jsonl", data), purpose="fine-tune")


def words_file(client: Any) -> Any:
    """A validation file unlike the training data: sentences of words, not digits."""
    pairs = [(f"Tell me about {word}.", " ".join(WORDS[i:] + WORDS[:i])) for i, word in enumerate(WORDS[:8])]
    return upload(client, chat_lines(pairs))


def create(client: Any, training: Any, *, epochs: int, seed: int = 3, **hyper: Any) -> Any:
    extra = {key: hyper.pop(key) for key in ("validation_file",) if key in hyper}
    hyperparameters = {"n_epochs": epochs, "batch_size": 4, **hyper}
    return client.fine_tuning.jobs.create(
        model=TINY,
        training_file=training.id,
        seed=seed,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        **extra,
    )


def early_stopping_job(client: Any, *, patience: int = 2) -> Any:
    training = upload(client, (ASSETS / "valid_chat.jsonl").read_bytes())
    return create(
        client,
        training,
        epochs=10,
        validation_file=words_file(client).id,
        early_stopping_patience=patience,
        **AGGRESSIVE,
    )


def all_events(client: Any, job_id: str) -> list[Any]:
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def results_rows(client: Any, job: Any) -> list[dict[str, str]]:
    (result_id,) = job.result_files
    return list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))


def checkpoints(client: Any, job_id: str) -> list[Any]:
    return sorted(client.fine_tuning.jobs.checkpoints.list(job_id, limit=100).data, key=lambda c: c.step_number)


def final_adapter(stores: Any, project_id: str, job_id: str) -> dict[str, Any]:
    return adapter_tensors(stores, adapter_blob_prefix(project_id, job_id, "final"))


def checkpoint_adapter(stores: Any, project_id: str, job_id: str, step: int) -> dict[str, Any]:
    return adapter_tensors(stores, adapter_blob_prefix(project_id, job_id, f"ckpt-step-{step}"))


def same_tensors(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(a[name].equal(b[name]) for name in a)


# ------------------------------------------------------------------------------------------- creation


def method(method_type: str = "supervised", **hyper: Any) -> dict[str, Any]:
    return {"method": {"type": method_type, method_type: {"hyperparameters": hyper}}}


SUPERVISED, DPO, LEGACY = "method.supervised.hyperparameters", "method.dpo.hyperparameters", "hyperparameters"
INVALID, WRONG_TYPE = "invalid_value", "invalid_type"


@pytest.mark.parametrize(
    ("kwargs", "validation", "param", "code"),
    [
        (method(early_stopping_patience=2), False, f"{SUPERVISED}.early_stopping_patience", INVALID),
        (method(early_stopping_min_delta=0.1), False, f"{SUPERVISED}.early_stopping_min_delta", INVALID),
        (method("dpo", early_stopping_patience=1), False, f"{DPO}.early_stopping_patience", INVALID),
        ({"hyperparameters": {"early_stopping_patience": 3}}, False, f"{LEGACY}.early_stopping_patience", INVALID),
        (method(early_stopping_min_delta=0.1), True, f"{SUPERVISED}.early_stopping_min_delta", INVALID),
        (method(early_stopping_patience=0), True, f"{SUPERVISED}.early_stopping_patience", INVALID),
        (method(early_stopping_patience=1.5), True, f"{SUPERVISED}.early_stopping_patience", WRONG_TYPE),
        (
            method(early_stopping_patience=1, early_stopping_min_delta=-0.5),
            True,
            f"{SUPERVISED}.early_stopping_min_delta",
            INVALID,
        ),
        (method(forgetting_check="yes"), False, f"{SUPERVISED}.forgetting_check", WRONG_TYPE),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_quality_settings_that_could_not_act_are_400_naming_them(client_a, kwargs, validation, param, code):
    training = upload(client_a, (ASSETS / "valid_chat.jsonl").read_bytes())
    extra = {"validation_file": words_file(client_a).id} if validation else {}
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(model=TINY, training_file=training.id, **kwargs, **extra)
    assert (err.value.param, err.value.code) == (param, code), err.value.message
    validate_error(err.value.response.json())
    if not validation and "patience" in param:
        assert "needs a validation_file" in err.value.message
    body = {"model": TINY, "training_file": training.id, **kwargs, **extra}
    with pytest.raises(openai.BadRequestError) as estimated:  # the estimate runs the same checks
        client_a.post("/fine_tuning/jobs/estimate", body=body, cast_to=object)
    assert estimated.value.param == param
    assert client_a.fine_tuning.jobs.list().data == []


def test_quality_settings_are_echoed_in_both_views_and_stay_openai_shaped(client_a, http, tenants):
    training = upload(client_a, (ASSETS / "valid_chat.jsonl").read_bytes())
    given = {"forgetting_check": True, "early_stopping_patience": 3, "early_stopping_min_delta": 0.01}
    job = client_a.fine_tuning.jobs.create(
        model=TINY, training_file=training.id, validation_file=words_file(client_a).id, **method(**given)
    )
    raw = http.get(f"/v1/fine_tuning/jobs/{job.id}", headers={"Authorization": f"Bearer {tenants['a'].key}"}).json()
    validate_operation(raw, "retrieveFineTuningJob")
    assert {key: raw["method"]["supervised"]["hyperparameters"][key] for key in given} == given
    assert {key: raw["hyperparameters"][key] for key in given} == given
    assert raw["best_checkpoint"] is None
    listed = http.get("/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {tenants['a'].key}"}).json()
    validate_operation(listed, "listPaginatedFineTuningJobs")
    assert listed["data"][0]["best_checkpoint"] is None
    assert listed["data"][0]["hyperparameters"] == raw["hyperparameters"]


# --------------------------------------------------------------------------------------- forgetting check


def test_the_forgetting_check_reports_probe_losses_in_checkpoints_results_and_events(
    client_a, http, stores, settings, tenants, tiny_dir, tmp_path
):
    from peft import PeftModel

    from tunewright.modeling.loading import load_model, load_tokenizer
    from tunewright.trainer.collate import pad_id_of
    from tunewright.trainer.forgetting import build_probe, probe_loss

    job = create(client_a, upload(client_a, (ASSETS / "valid_chat.jsonl").read_bytes()), epochs=2)
    assert run_worker(settings, stores) == ["succeeded"]
    done = client_a.fine_tuning.jobs.retrieve(job.id)
    headers = {"Authorization": f"Bearer {tenants['a'].key}"}
    raw = http.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints", headers=headers).json()
    validate_operation(raw, "listFineTuningJobCheckpoints")

    listed = checkpoints(client_a, job.id)
    assert [c.step_number for c in listed] == [3, 6]
    metrics = [c.metrics.to_dict() for c in listed]
    base = metrics[0]["probe_loss_base"]
    assert all(m["probe_loss_base"] == base for m in metrics)  # measured once per job

    # The base figure is the base model's; the last checkpoint's is the published adapter's, scored independently.
    tokenizer = load_tokenizer(tiny_dir)
    pad = pad_id_of(tokenizer)
    examples = settings.forgetting_probe_examples
    probe = build_probe(tokenizer, examples=examples, context_tokens=512, micro_batch_tokens=8192, pad_id=pad)
    assert base == pytest.approx(probe_loss(load_model(tiny_dir), probe), rel=1e-5)
    directory = tmp_path / "adapter"
    directory.mkdir()
    prefix = adapter_blob_prefix(tenants["a"].project_id, job.id, "final")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (directory / name).write_bytes(read_blob(stores, f"{prefix}/{name}"))
    tuned = PeftModel.from_pretrained(load_model(tiny_dir), directory)
    assert metrics[1]["probe_loss"] == pytest.approx(probe_loss(tuned, probe), rel=1e-5)
    assert metrics[1]["probe_loss"] != pytest.approx(base, rel=1e-4)

    rows = results_rows(client_a, done)
    assert tuple(rows[0]) == RESULTS_COLUMNS  # tests/unit/test_publish.py spells them out
    measured = {
        int(row["step"]): (float(row["probe_loss"]), float(row["probe_loss_base"])) for row in rows if row["probe_loss"]
    }
    assert measured == {
        3: (pytest.approx(metrics[0]["probe_loss"], rel=1e-5), pytest.approx(base, rel=1e-5)),
        6: (pytest.approx(metrics[1]["probe_loss"], rel=1e-5), pytest.approx(base, rel=1e-5)),
    }
    assert all(row["best_checkpoint"] == "" for row in rows)

    events = all_events(client_a, job.id)
    expected = f"Forgetting check: the base model's loss on the general probe set ({examples} conversations) is "
    expected += f"{base:.4f}"
    assert expected in [event.message for event in events]
    epoch_ends = [event for event in events if event.type == "metrics" and event.data["step"] in (3, 6)]
    assert [event.data["probe_loss"] for event in epoch_ends] == [m["probe_loss"] for m in metrics]
    assert all(", probe loss=" in event.message for event in epoch_ends)
    assert done.best_checkpoint is None  # no early stopping


def test_a_probe_loss_above_the_base_by_more_than_the_threshold_is_a_warning(client_a, stores, settings):
    settings.forgetting_threshold = 0.0
    # Replies of one repeated token teach the tiny model to expect it everywhere: its probe loss goes up.
    zeros = upload(client_a, chat_lines([(f"Count {i}.", " ".join(["0"] * (10 + i))) for i in range(12)]))
    job = create(client_a, zeros, epochs=3, **AGGRESSIVE)
    assert run_worker(settings, stores) == ["succeeded"]
    rose = [c.step_number for c in checkpoints(client_a, job.id) if c.metrics.probe_loss > c.metrics.probe_loss_base]
    assert rose  # the scenario the test is about
    warnings = [event.message for event in all_events(client_a, job.id) if event.level == "warn"]
    assert [int(message.split()[4]) for message in warnings] == rose
    assert all(message.startswith("Forgetting check: at step ") for message in warnings)
    assert all("above the base model's" in message and "(threshold 0%)" in message for message in warnings)


def test_forgetting_check_false_measures_nothing(client_a, http, stores, settings, tenants):
    settings.forgetting_threshold = 0.0
    training = upload(client_a, (ASSETS / "valid_chat.jsonl").read_bytes())
    job = create(client_a, training, epochs=2, forgetting_check=False)
    assert job.method.supervised.hyperparameters.to_dict()["forgetting_check"] is False
    assert job.hyperparameters.to_dict()["forgetting_check"] is False
    assert run_worker(settings, stores) == ["succeeded"]
    done = client_a.fine_tuning.jobs.retrieve(job.id)
    raw = http.get(f"/v1/fine_tuning/jobs/{job.id}", headers={"Authorization": f"Bearer {tenants['a'].key}"}).json()
    validate_operation(raw, "retrieveFineTuningJob")
    assert raw["method"]["supervised"]["hyperparameters"]["forgetting_check"] is False
    assert all("probe_loss" not in c.metrics.to_dict() for c in checkpoints(client_a, job.id))
    assert all(row["probe_loss"] == row["probe_loss_base"] == "" for row in results_rows(client_a, done))
    events = all_events(client_a, job.id)
    assert not [event for event in events if "Forgetting check" in event.message or event.level == "warn"]
    assert all("probe_loss" not in event.data for event in events if event.type == "metrics")


# ----------------------------------------------------------------------------------------- early stopping


def test_early_stopping_stops_the_job_and_publishes_its_best_checkpoint(client_a, http, stores, settings, tenants):
    job = early_stopping_job(client_a)
    assert run_worker(settings, stores) == ["succeeded"]
    done = client_a.fine_tuning.jobs.retrieve(job.id)
    raw = http.get(f"/v1/fine_tuning/jobs/{job.id}", headers={"Authorization": f"Bearer {tenants['a'].key}"}).json()
    validate_operation(raw, "retrieveFineTuningJob")
    assert done.status == "succeeded"
    project = tenants["a"].project_id

    steps = [event.data["step"] for event in metrics_events(stores, job.id, project)]
    assert steps[-1] < 30  # 10 epochs of 3 steps were planned
    assert steps == list(range(1, steps[-1] + 1))
    listed = checkpoints(client_a, job.id)
    assert [c.step_number for c in listed] == list(range(3, steps[-1] + 1, 3))
    losses = [c.metrics.full_valid_loss for c in listed]
    best = listed[losses.index(min(losses))]
    assert best.step_number <= steps[-1] - 6  # two evaluations without improvement followed it

    messages = [event.message for event in all_events(client_a, job.id)]
    stop = (
        f"Early stopping at step {steps[-1]}/30: the full validation loss has not improved for 2 evaluations "
        f"(best {best.metrics.full_valid_loss:.4f} at step {best.step_number})"
    )
    assert stop in messages
    assert messages[-1] == "The job has successfully completed"

    assert raw["best_checkpoint"] == done.best_checkpoint == best.fine_tuned_model_checkpoint
    assert best.fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-{best.step_number}"
    final = final_adapter(stores, project, job.id)
    assert same_tensors(final, checkpoint_adapter(stores, project, job.id, best.step_number))
    assert not same_tensors(final, checkpoint_adapter(stores, project, job.id, listed[-1].step_number))

    rows = results_rows(client_a, done)
    assert [int(row["step"]) for row in rows] == steps
    assert [int(row["step"]) for row in rows if row["best_checkpoint"] == "1"] == [best.step_number]
    usage = stores.metadata.list_training_usage(job.id, project_id=project)
    assert [row.step for row in usage] == steps
    assert done.trained_tokens == sum(row.trained_tokens for row in usage)


# The counter lives in the resume point, which test_worker.py resumes on PostgreSQL + S3.
@pytest.mark.parametrize("backend", ["embedded"])
def test_a_resumed_job_keeps_counting_its_patience_after_a_crash(client_a, stores, settings, tenants, monkeypatch):
    class Crash(BaseException):
        """The worker dies mid-step: nothing below `run_once` sees it."""

    straight = early_stopping_job(client_a)
    assert run_worker(settings, stores) == ["succeeded"]
    crashed = early_stopping_job(client_a)
    original = Session.on_step

    def dying(self: Session, metrics: Any) -> bool:
        if metrics.step == 8:  # after step 6's checkpoint and resume point (one evaluation without improvement)
            raise Crash
        return original(self, metrics)

    monkeypatch.setattr(Session, "on_step", dying)
    with pytest.raises(Crash):
        make_worker(settings, stores).run_once()
    monkeypatch.setattr(Session, "on_step", original)
    assert client_a.fine_tuning.jobs.retrieve(crashed.id).status == "running"
    assert run_worker(settings, stores) == ["succeeded"]  # claims it once the lease expires

    messages = [event.message for event in all_events(client_a, crashed.id)]
    assert "Resumed from step 6/30" in messages
    assert_same_outcome(client_a, stores, tenants["a"].project_id, straight, crashed)


@pytest.mark.parametrize("pause_at", [5, 6])  # mid-epoch, and at an epoch end (its checkpoint and evaluation)
# The counter lives in the resume point, which test_worker.py resumes on PostgreSQL + S3.
@pytest.mark.parametrize("backend", ["embedded"])
def test_a_paused_job_keeps_counting_its_patience(client_a, stores, settings, tenants, monkeypatch, pause_at):
    straight = early_stopping_job(client_a)
    assert run_worker(settings, stores) == ["succeeded"]
    paused = early_stopping_job(client_a)
    original = Session.on_step

    def pausing(self: Session, metrics: Any) -> bool:
        if metrics.step == pause_at:  # the user pauses while the step runs: its update is refused
            assert client_a.fine_tuning.jobs.pause(paused.id).status == "paused"
        return original(self, metrics)

    monkeypatch.setattr(Session, "on_step", pausing)
    assert run_worker(settings, stores) == ["paused"]
    monkeypatch.setattr(Session, "on_step", original)
    client_a.fine_tuning.jobs.resume(paused.id)
    assert run_worker(settings, stores) == ["succeeded"]
    messages = [event.message for event in all_events(client_a, paused.id)]
    assert f"Resumed from step {pause_at}/30" in messages
    assert [c.step_number for c in checkpoints(client_a, paused.id)] == [
        c.step_number for c in checkpoints(client_a, straight.id)
    ]
    assert_same_outcome(client_a, stores, tenants["a"].project_id, straight, paused)


def assert_same_outcome(client: Any, stores: Any, project: str, straight: Any, resumed: Any) -> None:
    """A resumed early-stopping job stops where the uninterrupted one did and publishes the same adapter."""
    a = client.fine_tuning.jobs.retrieve(straight.id)
    b = client.fine_tuning.jobs.retrieve(resumed.id)
    assert a.best_checkpoint is not None
    assert b.best_checkpoint.rsplit(":", 1)[1] == a.best_checkpoint.rsplit(":", 1)[1]
    assert b.trained_tokens == a.trained_tokens
    assert [row["step"] for row in results_rows(client, b)] == [row["step"] for row in results_rows(client, a)]
    stops = [
        [event.message for event in all_events(client, job.id) if event.message.startswith("Early stopping at")]
        for job in (a, b)
    ]
    assert stops[0] == stops[1]
    assert len(stops[0]) == 1
    assert same_tensors(final_adapter(stores, project, a.id), final_adapter(stores, project, b.id))


def test_a_best_checkpoint_deleted_before_the_end_leaves_the_last_adapter_as_the_model(
    client_a, stores, settings, tenants, monkeypatch
):
    job = early_stopping_job(client_a, patience=1)
    original = Session.end_epoch

    def deleting(self: Session, metrics: Any, values: dict[str, float]) -> bool:
        stops = original(self, metrics, values)
        if stops:  # the user deletes the best checkpoint's model just as the job stops
            best = self.progress.early_stopping.best_step
            (model,) = [c for c in checkpoints(client_a, job.id) if c.step_number == best]
            client_a.models.delete(model.fine_tuned_model_checkpoint)
        return stops

    monkeypatch.setattr(Session, "end_epoch", deleting)
    assert run_worker(settings, stores) == ["succeeded"]
    done = client_a.fine_tuning.jobs.retrieve(job.id)
    project = tenants["a"].project_id
    last = metrics_events(stores, job.id, project)[-1].data["step"]
    assert last < 30
    assert done.best_checkpoint is None
    assert done.fine_tuned_model is not None
    assert same_tensors(final_adapter(stores, project, job.id), checkpoint_adapter(stores, project, job.id, last))
    warnings = [event.message for event in all_events(client_a, job.id) if event.level == "warn"]
    assert any(message.startswith("The best checkpoint (step ") and "was deleted" in message for message in warnings)
    assert all(row["best_checkpoint"] == "" for row in results_rows(client_a, done))

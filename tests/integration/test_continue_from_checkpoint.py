"""A job whose `model` is a checkpoint model (`ft:…:ckpt-step-N`) trains on from that checkpoint's adapter.

The tiny model, an in-process worker, the real openai SDK; on SQLite + local files and on PostgreSQL + S3. The
proof is twofold: the adapter the session starts from holds exactly the checkpoint's weights, and the first
step's loss (measured before its update) is the checkpoint adapter's loss on that first batch, computed here
independently with PEFT, not the base model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from fixtures.training import TINY, adapter_tensors, metrics_events, read_blob, run_worker, training_settings

from tunewright.modeling.dataset import tokenize_dataset
from tunewright.modeling.loading import load_model, load_tokenizer
from tunewright.trainer import job as job_module

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TRAINING = (ASSETS / "valid_chat.jsonl").read_bytes()
EXAMPLES = len(TRAINING.splitlines())


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Any:
    return training_settings(request, tmp_path, backend, tiny_dir)


def create(client: openai.OpenAI, model: str, training_id: str, **hyper: Any) -> Any:
    return client.fine_tuning.jobs.create(
        model=model,
        training_file=training_id,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
    )


def checkpoint_of_a_trained_job(client: openai.OpenAI, stores: Any, settings: Any) -> tuple[Any, Any]:
    """Train the tiny model for three epochs; return the file and the first (oldest kept) checkpoint."""
    training = client.files.create(file=("train.jsonl", TRAINING), purpose="fine-tune")
    first = create(client, TINY, training.id, n_epochs=3, batch_size=4)
    assert run_worker(settings, stores) == ["succeeded"]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(first.id).data
    assert [c.step_number for c in checkpoints] == [9, 6, 3]
    return training, checkpoints[-1]


def capture_start_weights(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Wrap the worker's training call to keep the adapter's tensors as they are before the first step."""
    from peft import get_peft_model_state_dict

    captured: dict[str, Any] = {}
    original = job_module.train_session

    def train_session(session: Any) -> None:
        state = get_peft_model_state_dict(session.model)
        captured.update({name: tensor.detach().clone() for name, tensor in state.items()})
        original(session)

    monkeypatch.setattr(job_module, "train_session", train_session)
    return captured


def adapter_dir(stores: Any, prefix: str, directory: Path) -> Path:
    directory.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (directory / name).write_bytes(read_blob(stores, f"{prefix}/{name}"))
    return directory


def mean_target_loss(model: Any, tiny_dir: Path) -> float:
    """The cross-entropy per target token over every example of the file, one example at a time (no padding)."""
    import torch

    data = tokenize_dataset(
        TRAINING.splitlines(), load_tokenizer(tiny_dir), param="training_file", method="supervised", max_tokens=10_000
    )
    total, targets = 0.0, 0
    model.eval()
    with torch.no_grad():
        for example in data.examples:
            ids = torch.tensor([example.ids])
            mask = torch.tensor(example.mask[1:], dtype=torch.bool)
            logits = model(input_ids=ids).logits[0, :-1].float()
            losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            total += float(losses[mask].sum())
            targets += int(mask.sum())
    return total / targets


def test_a_job_from_a_checkpoint_starts_from_its_adapter(
    client_a, stores, settings, tenants, tiny_dir, tmp_path, monkeypatch
):
    from peft import PeftModel

    training, checkpoint = checkpoint_of_a_trained_job(client_a, stores, settings)
    name = checkpoint.fine_tuned_model_checkpoint
    assert name.endswith(":ckpt-step-3")

    # One batch of the whole file, no dropout: the first step's loss is the adapter's loss on that file.
    job = create(client_a, name, training.id, n_epochs=1, batch_size=EXAMPLES, lora_dropout=0.0)
    assert job.model == name
    start = capture_start_weights(monkeypatch)
    assert run_worker(settings, stores) == ["succeeded"]
    done = client_a.fine_tuning.jobs.retrieve(job.id)
    assert done.model == name
    assert done.fine_tuned_model.startswith(f"ft:{TINY}:acme::")

    stored = adapter_tensors(stores, checkpoint_prefix(stores, tenants, checkpoint))
    assert sorted(start) == sorted(stored)
    assert all(start[key].equal(stored[key]) for key in stored)
    assert any(float(tensor.abs().sum()) > 0 for key, tensor in stored.items() if "lora_B" in key)

    first_loss = metrics_events(stores, job.id, tenants["a"].project_id)[0].data["train_loss"]
    directory = adapter_dir(stores, checkpoint_prefix(stores, tenants, checkpoint), tmp_path / "ckpt")
    with_checkpoint = mean_target_loss(PeftModel.from_pretrained(load_model(tiny_dir), directory), tiny_dir)
    base = mean_target_loss(load_model(tiny_dir), tiny_dir)
    assert first_loss == pytest.approx(with_checkpoint, rel=1e-4)
    assert abs(with_checkpoint - base) > 100 * abs(first_loss - with_checkpoint)


def checkpoint_prefix(stores: Any, tenants: Any, checkpoint: Any) -> str:
    model = stores.metadata.get_model(checkpoint.fine_tuned_model_checkpoint, project_id=tenants["a"].project_id)
    return model.adapter_key


def test_another_projects_checkpoint_needs_a_permission(client_a, sdk, stores, settings, tenants):
    _, checkpoint = checkpoint_of_a_trained_job(client_a, stores, settings)
    name = checkpoint.fine_tuned_model_checkpoint
    client_a2 = sdk(tenants["a2"].key)
    client_b = sdk(tenants["b"].key)
    mine = {}
    for key, client in (("a2", client_a2), ("b", client_b)):
        mine[key] = client.files.create(file=("train.jsonl", TRAINING), purpose="fine-tune").id
        with pytest.raises(openai.BadRequestError) as err:
            create(client, name, mine[key], n_epochs=1)
        assert (err.value.status_code, err.value.code, err.value.body["param"]) == (400, "model_not_found", "model")
        with pytest.raises(openai.BadRequestError):
            client.post("/fine_tuning/jobs/estimate", body={"model": name, "training_file": mine[key]}, cast_to=object)

    client_a.fine_tuning.checkpoints.permissions.create(name, project_ids=[tenants["a2"].project_id])
    job = create(client_a2, name, mine["a2"], n_epochs=1)
    assert job.model == name
    assert run_worker(settings, stores) == ["succeeded"]
    assert client_a2.fine_tuning.jobs.retrieve(job.id).fine_tuned_model.startswith(f"ft:{TINY}:acme::")


def test_a_checkpoint_deleted_before_the_job_trains_fails_it_as_model_not_found(client_a, stores, settings):
    training, checkpoint = checkpoint_of_a_trained_job(client_a, stores, settings)
    name = checkpoint.fine_tuned_model_checkpoint
    job = create(client_a, name, training.id, n_epochs=1)
    assert client_a.models.delete(name).deleted is True
    assert run_worker(settings, stores) == ["failed"]
    done = client_a.fine_tuning.jobs.retrieve(job.id)
    assert (done.error.code, done.error.param) == ("model_not_found", "model")
    assert name in done.error.message

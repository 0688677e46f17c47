"""Hyperparameters that could not train are refused when the job is created, not left to fail once it runs.

A huge `learning_rate_multiplier` and `lora_target_modules` that name no linear layer of the base model used to
pass creation and end the job as `internal_error`. The API refuses them with a 400 naming the field the SDK sent;
a model whose files are not on the API's machine has its modules checked by the worker, which fails the job
naming the field rather than with an internal error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest
from fixtures.contract import validate_error
from fixtures.training import TINY, TRAINING_SETTINGS, run_worker, training_settings

from tunewright.modeling.modules import adaptable_modules

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
METHOD_PATH = "method.supervised.hyperparameters"


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Any:
    """The tiny model is a base model whose files are on the API's machine."""
    return training_settings(request, tmp_path, backend, tiny_dir)


@pytest.fixture
def training_file(client_a: openai.OpenAI) -> Any:
    return client_a.files.create(file=("train.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune")


def supervised(**hyper: Any) -> dict[str, Any]:
    return {"method": {"type": "supervised", "supervised": {"hyperparameters": hyper}}}


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        (supervised(learning_rate_multiplier=1e308), f"{METHOD_PATH}.learning_rate_multiplier"),
        (supervised(learning_rate_multiplier=10.5), f"{METHOD_PATH}.learning_rate_multiplier"),
        ({"hyperparameters": {"learning_rate_multiplier": 1e308}}, "hyperparameters.learning_rate_multiplier"),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"learning_rate_multiplier": 1e300}}}},
            "method.dpo.hyperparameters.learning_rate_multiplier",
        ),
        (supervised(lora_target_modules=[]), f"{METHOD_PATH}.lora_target_modules"),
        (supervised(lora_target_modules=["../x"]), f"{METHOD_PATH}.lora_target_modules[0]"),
        (supervised(lora_target_modules=["q_proj", "a/b"]), f"{METHOD_PATH}.lora_target_modules[1]"),
        (supervised(lora_target_modules=["q_proj", ""]), f"{METHOD_PATH}.lora_target_modules[1]"),
        (supervised(lora_target_modules="q_proj"), f"{METHOD_PATH}.lora_target_modules"),
        (supervised(lora_target_modules=["not_a_module"]), f"{METHOD_PATH}.lora_target_modules"),
        (supervised(lora_target_modules=["q_proj", "nope"]), f"{METHOD_PATH}.lora_target_modules"),
        (supervised(lora_target_modules=["layers.9.self_attn.q_proj"]), f"{METHOD_PATH}.lora_target_modules"),
        (supervised(lora_target_modules=["input_layernorm"]), f"{METHOD_PATH}.lora_target_modules"),  # not 2-D
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_hyperparameters_that_cannot_train_are_400_at_creation(client_a, training_file, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(model=TINY, training_file=training_file.id, **kwargs)
    assert (err.value.param, err.value.code) == (param, "invalid_value"), err.value.message
    validate_error(err.value.response.json())
    assert client_a.fine_tuning.jobs.list().data == []


def test_a_learning_rate_multiplier_past_any_float_is_400_invalid_json(http, tenants, training_file):
    # JSON has no infinity; the decoder refuses `1e999` rather than reading it as one.
    body = json.dumps({"model": TINY, "training_file": training_file.id, **supervised(learning_rate_multiplier=1)})
    raw = http.post(
        "/v1/fine_tuning/jobs",
        content=body.replace('"learning_rate_multiplier": 1', '"learning_rate_multiplier": 1e999'),
        headers={"Authorization": f"Bearer {tenants['a'].key}", "content-type": "application/json"},
    )
    assert raw.status_code == 400, raw.text
    assert raw.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    "targets",
    [
        "all-linear",
        ["q_proj", "v_proj"],
        ["self_attn.o_proj", "mlp.down_proj", "model.layers.1.mlp.up_proj", "embed_tokens", "lm_head"],
    ],
)
def test_module_names_of_the_base_model_are_accepted(client_a, training_file, targets):
    job = client_a.fine_tuning.jobs.create(
        model=TINY,
        training_file=training_file.id,
        **supervised(lora_target_modules=targets, learning_rate_multiplier=10),
    )
    assert job.method.supervised.hyperparameters.to_dict()["lora_target_modules"] == targets


def test_the_modules_a_lora_adapter_can_target_are_read_from_the_weight_headers(tiny_dir):
    modules = adaptable_modules(tiny_dir)
    assert modules is not None
    assert {"model.layers.0.self_attn.q_proj", "model.embed_tokens", "lm_head"} <= modules
    assert not any(name.endswith("layernorm") or name == "model.norm" for name in modules)
    assert adaptable_modules(tiny_dir.parent) is None  # no weights there: nothing to check against


def test_the_worker_fails_a_job_whose_modules_the_api_could_not_check_naming_the_field(
    sdk, tenants, stores, settings, tiny_dir, tmp_path
):
    from litestar.testing import TestClient

    from tunewright.api.app import create_app

    # The API's machine does not have the model's files; the worker's does.
    api_settings = msgspec.structs.replace(settings, base_models={TINY: str(tmp_path / "elsewhere")})
    app = create_app(api_settings, stores, sweep=False)
    with TestClient(app, base_url="http://testserver.local") as http:
        client = openai.OpenAI(
            base_url="http://testserver.local/v1", api_key=tenants["a"].key, http_client=http, max_retries=0
        )
        data = (ASSETS / "valid_chat.jsonl").read_bytes()
        training = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=TINY, training_file=training.id, **supervised(lora_target_modules=["not_a_module"])
        )
        worker_settings = msgspec.structs.replace(settings, base_models={TINY: str(tiny_dir)}, **TRAINING_SETTINGS)
        assert run_worker(worker_settings, stores) == ["failed"]
        failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.error.code == "invalid_value"
    assert failed.error.param == f"{METHOD_PATH}.lora_target_modules"
    assert "'not_a_module'" in failed.error.message


def test_the_legacy_hyperparameters_take_the_lora_settings_through_the_sdk(client_a, training_file):
    lora = {"lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.1, "lora_target_modules": ["q_proj", "v_proj"]}
    job = client_a.fine_tuning.jobs.create(
        model=TINY, training_file=training_file.id, hyperparameters={"n_epochs": 1, **lora}
    )
    assert job.method.type == "supervised"
    method_hyper = job.method.supervised.hyperparameters.to_dict()
    assert {key: method_hyper[key] for key in lora} == lora  # what the worker trains with
    assert {key: job.hyperparameters.to_dict()[key] for key in lora} == lora


@pytest.mark.parametrize(
    ("hyper", "param", "code"),
    [
        ({"lora_rank": 0}, "hyperparameters.lora_rank", "invalid_value"),
        ({"lora_dropout": 1.0}, "hyperparameters.lora_dropout", "invalid_value"),
        ({"lora_target_modules": ["../x"]}, "hyperparameters.lora_target_modules[0]", "invalid_value"),
        ({"lora_target_modules": ["not_a_module"]}, "hyperparameters.lora_target_modules", "invalid_value"),
        ({"lora_warmup": 3}, "hyperparameters.lora_warmup", "unknown_parameter"),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_the_legacy_hyperparameters_check_the_lora_settings_as_the_method_does(
    client_a, training_file, hyper, param, code
):
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(model=TINY, training_file=training_file.id, hyperparameters=hyper)
    assert (err.value.param, err.value.code) == (param, code), err.value.message

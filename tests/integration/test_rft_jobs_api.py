"""Reinforcement fine-tuning jobs: creation through the real openai SDK, the echo checked against OpenAI's schemas."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from fixtures.contract import schema_for, validate, validate_error, validate_operation

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASE = "smollm2-135m-instruct"
STRING_CHECK = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


def auth(tenant):
    return {"Authorization": f"Bearer {tenant.key}"}


@pytest.fixture
def rft_file(client_a):
    return client_a.files.create(file=("rft.jsonl", (ASSETS / "valid_rft.jsonl").read_bytes()), purpose="fine-tune")


def upload(client, lines):
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return client.files.create(file=("rft.jsonl", body), purpose="fine-tune")


def prompt(i, **extra):
    return {"messages": [{"role": "user", "content": f"What is {i} + 1?"}], **extra}


def rft(grader=None, **hyper):
    section = {"grader": grader or STRING_CHECK}
    if hyper:
        section["hyperparameters"] = hyper
    return {"type": "reinforcement", "reinforcement": section}


def test_reinforcement_job_echoes_its_grader_and_auto_hyperparameters(client_a, http, tenants, rft_file):
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=rft_file.id, method=rft())
    assert job.status == "validating_files"
    assert job.method.type == "reinforcement"
    raw = http.get(f"/v1/fine_tuning/jobs/{job.id}", headers=auth(tenants["a"])).json()
    validate_operation(raw, "retrieveFineTuningJob")
    validate(raw["method"]["reinforcement"], schema_for("FineTuneReinforcementMethod"))
    assert raw["method"]["reinforcement"]["grader"] == STRING_CHECK
    assert raw["method"]["reinforcement"]["hyperparameters"] == {
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "n_epochs": "auto",
        "compute_multiplier": "auto",
        "eval_interval": "auto",
        "eval_samples": "auto",
        "reasoning_effort": "default",
    }
    assert raw["hyperparameters"] == {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}


def test_reinforcement_hyperparameters_given_are_echoed_as_given(client_a, rft_file):
    hyper = {
        "batch_size": 2,
        "learning_rate_multiplier": 0.5,
        "n_epochs": 1,
        "compute_multiplier": 1.5,
        "eval_interval": 3,
        "eval_samples": 4,
        "reasoning_effort": "low",
    }
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=rft_file.id, method=rft(**hyper))
    echoed = job.method.reinforcement.hyperparameters
    assert echoed.to_dict() == hyper
    validate(job.method.reinforcement.to_dict(), schema_for("FineTuneReinforcementMethod"))
    assert job.hyperparameters.n_epochs == 1


def test_a_model_grader_on_the_base_model_is_accepted(client_a, rft_file):
    grader = {
        "type": "score_model",
        "name": "judge",
        "model": BASE,
        "input": [{"role": "user", "content": "Score 0 to 1: {{sample.output_text}} vs {{item.answer}}"}],
        "range": [0, 1],
    }
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=rft_file.id, method=rft(grader))
    assert job.method.reinforcement.grader.model == BASE


@pytest.mark.parametrize(
    ("method", "param", "code"),
    [
        ({"type": "reinforcement"}, "method.reinforcement", "missing_required_parameter"),
        ({"type": "reinforcement", "reinforcement": {}}, "method.reinforcement.grader", "missing_required_parameter"),
        (rft({"type": "string_check", "name": "x"}), "method.reinforcement.grader.input", None),
        (rft({**STRING_CHECK, "operation": "near"}), "method.reinforcement.grader.operation", None),
        (rft({**STRING_CHECK, "input": "{{ nothing.here }}"}), "method.reinforcement.grader.input", None),
        (rft(compute_multiplier=11), "method.reinforcement.hyperparameters.compute_multiplier", "invalid_value"),
        (rft(compute_multiplier=0), "method.reinforcement.hyperparameters.compute_multiplier", "invalid_value"),
        (rft(eval_interval=0), "method.reinforcement.hyperparameters.eval_interval", "invalid_value"),
        (rft(eval_samples="many"), "method.reinforcement.hyperparameters.eval_samples", "invalid_value"),
        (rft(reasoning_effort="max"), "method.reinforcement.hyperparameters.reasoning_effort", "invalid_value"),
        (rft(beta=0.1), "method.reinforcement.hyperparameters.beta", "unknown_parameter"),
        (
            rft(early_stopping_patience=2),
            "method.reinforcement.hyperparameters.early_stopping_patience",
            "invalid_value",
        ),
        (rft(forgetting_check="no"), "method.reinforcement.hyperparameters.forgetting_check", None),
        (
            rft({"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}),
            "method.reinforcement.grader.type",
            "unsupported_value",
        ),
        (
            rft(
                {
                    "type": "score_model",
                    "name": "judge",
                    "model": "gpt-4o",
                    "input": [{"role": "user", "content": "{{sample.output_text}}"}],
                }
            ),
            "method.reinforcement.grader.model",
            "unsupported_value",
        ),
        (
            rft(
                {
                    "type": "multi",
                    "name": "m",
                    "graders": {"a": {**STRING_CHECK, "operation": "xx"}},
                    "calculate_output": "a",
                }
            ),
            "method.reinforcement.grader.graders.a.operation",
            None,
        ),
        ({**rft(), "dpo": {}}, "method.dpo", "invalid_value"),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_bad_reinforcement_bodies_are_400_naming_the_param(client_a, rft_file, method, param, code):
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(model=BASE, training_file=rft_file.id, method=method)
    assert err.value.param == param, err.value.message
    if code is not None:
        assert err.value.code == code
    validate_error(err.value.response.json())


def test_a_line_the_grader_cannot_fill_is_a_line_located_400(client_a):
    lines = [prompt(i, answer=str(i + 1)) for i in range(11)]
    lines[4] = prompt(4, solution="5")
    bad = upload(client_a, lines)
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(model=BASE, training_file=bad.id, method=rft())
    assert err.value.param == "training_file"
    assert err.value.code == "invalid_training_file"
    assert "line 5:" in err.value.message
    assert "item.answer" in err.value.message


def test_a_prompt_ending_with_the_assistant_is_refused(client_a):
    lines = [prompt(i, answer="1") for i in range(10)]
    lines[2]["messages"].append({"role": "assistant", "content": "4"})
    bad = upload(client_a, lines)
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(model=BASE, training_file=bad.id, method=rft())
    assert "line 3: messages[1] must not be an assistant message" in err.value.message


def test_preference_lines_are_refused_for_a_reinforcement_job(client_a):
    dpo = client_a.files.create(file=("dpo.jsonl", (ASSETS / "valid_dpo.jsonl").read_bytes()), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(model=BASE, training_file=dpo.id, method=rft())
    assert "reinforcement jobs need chat examples" in err.value.message


def test_a_validation_file_is_checked_against_the_grader_too(client_a, rft_file):
    bad = upload(client_a, [prompt(1, label="2")])
    with pytest.raises(openai.BadRequestError) as err:
        client_a.fine_tuning.jobs.create(model=BASE, training_file=rft_file.id, validation_file=bad.id, method=rft())
    assert err.value.param == "validation_file"
    assert "line 1:" in err.value.message


def test_a_reinforcement_job_may_turn_the_forgetting_check_off(client_a, rft_file):
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=rft_file.id, method=rft(forgetting_check=False))
    assert job.method.reinforcement.hyperparameters.model_dump()["forgetting_check"] is False

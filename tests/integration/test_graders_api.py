"""/v1/fine_tuning/alpha/graders/validate and /run through the real openai SDK, bodies checked against OpenAI's
OpenAPI schemas; the score model grader asks the tiny model through the app's engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from fixtures.app import make_key
from fixtures.contract import validate_error, validate_operation
from fixtures.models import make_model
from fixtures.training import TINY, training_settings
from litestar.testing import TestClient

from tunewright.api.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

STRING_CHECK = {
    "type": "string_check",
    "name": "Example string check grader",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "operation": "eq",
}
SIMILARITY = {
    "type": "text_similarity",
    "name": "similar",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "evaluation_metric": "fuzzy_match",
}
SCORE_MODEL = {
    "type": "score_model",
    "name": "Example score model grader",
    "input": [
        {"role": "system", "content": "Answer with a number between 0 and 1."},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Reference: {{item.label}}\nAnswer: {{sample.output_text}}\nScore:"}
            ],
        },
    ],
    "model": TINY,
    "sampling_params": {"temperature": 0, "seed": 42, "max_completions_tokens": 4, "reasoning_effort": "low"},
}
PYTHON = {
    "type": "python",
    "name": "py",
    "source": "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['label'] else 0.25\n",
}


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Any:
    return training_settings(request, tmp_path, backend, tiny_dir)


def post(http: TestClient[Any], tenant: Any, path: str, body: dict[str, Any]) -> Any:
    return http.post(
        f"/v1/fine_tuning/alpha/graders/{path}", headers={"Authorization": f"Bearer {tenant.key}"}, json=body
    )


def bad_request(http: TestClient[Any], tenant: Any, path: str, body: dict[str, Any], status: int = 400) -> Any:
    response = post(http, tenant, path, body)
    assert response.status_code == status, response.text
    validate_error(response.json())
    return response.json()["error"]


# ----------------------------------------------------------------------------------------- validate


@pytest.mark.parametrize("backend", ["embedded"])
def test_validate_echoes_the_grader_as_openai_does(client_a, http, tenants):
    validated = client_a.fine_tuning.alpha.graders.validate(grader=STRING_CHECK)
    assert validated.grader.type == "string_check"
    assert validated.grader.reference == "{{item.label}}"
    for grader in (STRING_CHECK, SIMILARITY, SCORE_MODEL, {**SCORE_MODEL, "range": [0, 10]}):
        raw = post(http, tenants["a"], "validate", {"grader": grader})
        assert raw.status_code == 200, raw.text
        validate_operation(raw.json(), "validateGrader")
        assert raw.json() == {"grader": {**grader, **({"range": [0.0, 10.0]} if "range" in grader else {})}}
    multi = {
        "type": "multi",
        "name": "m",
        "graders": {"exact": STRING_CHECK, "close": SIMILARITY},
        "calculate_output": "0.5 * exact + 0.5 * close",
    }
    assert post(http, tenants["a"], "validate", {"grader": multi}).json() == {"grader": multi}


@pytest.mark.parametrize("backend", ["embedded"])
@pytest.mark.parametrize(
    ("grader", "param", "code"),
    [
        ({**STRING_CHECK, "operation": "contains"}, "grader.operation", "invalid_value"),
        ({**STRING_CHECK, "extra": 1}, "grader.extra", "unknown_parameter"),
        ({**STRING_CHECK, "input": "{{ answer }}"}, "grader.input", "invalid_value"),
        (
            {
                "type": "multi",
                "name": "m",
                "graders": {"a": {**STRING_CHECK, "operation": "x"}},
                "calculate_output": "a",
            },
            "grader.graders.a.operation",
            "invalid_value",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": STRING_CHECK}, "calculate_output": "a + __import__('os')"},
            "grader.calculate_output",
            "invalid_value",
        ),
        ({**SIMILARITY, "evaluation_metric": "cosine"}, "grader.evaluation_metric", "unsupported_value"),
        (PYTHON, "grader.type", "unsupported_value"),
        ({**SCORE_MODEL, "range": [1, 0]}, "grader.range", "invalid_value"),
        ({**SCORE_MODEL, "sampling_params": {"temperature": 5}}, "grader.sampling_params.temperature", "invalid_value"),
    ],
)
def test_a_bad_grader_is_400_naming_the_param(client_a, http, tenants, grader, param, code):
    error = bad_request(http, tenants["a"], "validate", {"grader": grader})
    assert (error["param"], error["code"]) == (param, code)
    with pytest.raises(openai.BadRequestError) as caught:
        client_a.fine_tuning.alpha.graders.validate(grader=grader)
    assert caught.value.body["param"] == param
    run = bad_request(http, tenants["a"], "run", {"grader": grader, "model_sample": "x", "item": {"label": "x"}})
    assert run["param"] == param


def test_model_graders_may_name_only_models_the_project_may_call(http, stores, tenants):
    own = make_model(stores, tenants["a"], base=TINY)
    other = make_model(stores, tenants["b"], base=TINY, name=f"ft:{TINY}:globex:sfx:Zz9yXx8w")
    assert post(http, tenants["a"], "validate", {"grader": {**SCORE_MODEL, "model": own}}).status_code == 200
    for model in (other, "no-such-model"):
        error = bad_request(http, tenants["a"], "validate", {"grader": {**SCORE_MODEL, "model": model}}, status=404)
        assert (error["code"], error["param"]) == ("model_not_found", "grader.model")
    nested = {
        "type": "multi",
        "name": "m",
        "graders": {"judge": {**SCORE_MODEL, "model": other}},
        "calculate_output": "judge",
    }
    error = bad_request(http, tenants["a"], "run", {"grader": nested, "model_sample": "x", "item": {"label": "y"}}, 404)
    assert error["param"] == "grader.graders.judge.model"


# ---------------------------------------------------------------------------------------------- run


@pytest.mark.parametrize("backend", ["embedded"])
def test_run_a_string_check_in_openais_shape(client_a, http, tenants):
    result = client_a.fine_tuning.alpha.graders.run(grader=STRING_CHECK, model_sample="Paris", item={"label": "Paris"})
    assert result.reward == 1.0
    assert (result.metadata.name, result.metadata.type) == ("Example string check grader", "string_check")
    assert result.metadata.errors.formula_parse_error is False
    assert result.metadata.token_usage is None
    assert result.sub_rewards == {}
    raw = post(http, tenants["a"], "run", {"grader": STRING_CHECK, "model_sample": "Lyon", "item": {"label": "Paris"}})
    body = raw.json()
    validate_operation(body, "runGrader")
    assert body["reward"] == 0.0
    assert set(body) == {"reward", "metadata", "sub_rewards", "model_grader_token_usage_per_model"}
    assert set(body["metadata"]) == {
        "name",
        "type",
        "errors",
        "execution_time",
        "scores",
        "token_usage",
        "sampled_model_name",
    }
    assert body["metadata"]["errors"] == {
        "formula_parse_error": False,
        "sample_parse_error": False,
        "truncated_observation_error": False,
        "unresponsive_reward_error": False,
        "invalid_variable_error": False,
        "other_error": False,
        "python_grader_server_error": False,
        "python_grader_server_error_type": None,
        "python_grader_runtime_error": False,
        "python_grader_runtime_error_details": None,
        "model_grader_server_error": False,
        "model_grader_refusal_error": False,
        "model_grader_parse_error": False,
        "model_grader_server_error_details": None,
    }


@pytest.mark.parametrize("backend", ["embedded"])
def test_run_a_multi_grader_reports_sub_rewards(client_a, http, tenants):
    multi = {
        "type": "multi",
        "name": "combined",
        "graders": {"exact": STRING_CHECK, "close": SIMILARITY},
        "calculate_output": "0.5 * exact + 0.5 * close",
    }
    result = client_a.fine_tuning.alpha.graders.run(grader=multi, model_sample="abcd", item={"label": "abce"})
    assert result.sub_rewards == {"exact": 0.0, "close": 0.75}
    assert result.reward == pytest.approx(0.375)
    json_check = {**STRING_CHECK, "input": "{{sample.output_json.answer}}"}
    raw = post(http, tenants["a"], "run", {"grader": json_check, "model_sample": "not json", "item": {"label": "x"}})
    validate_operation(raw.json(), "runGrader")
    assert raw.json()["metadata"]["errors"]["sample_parse_error"] is True


@pytest.mark.parametrize("backend", ["embedded"])
def test_an_item_missing_a_templated_field_is_400_naming_it(http, tenants):
    error = bad_request(http, tenants["a"], "run", {"grader": STRING_CHECK, "model_sample": "x", "item": {"other": 1}})
    assert error["param"] == "grader.reference"
    assert "item has no `label`" in error["message"]
    error = bad_request(http, tenants["a"], "run", {"grader": STRING_CHECK, "model_sample": "x"})
    assert error["param"] == "grader.reference"
    assert bad_request(http, tenants["a"], "run", {"grader": STRING_CHECK})["param"] == "model_sample"


def test_a_score_model_grader_asks_the_model_and_reports_its_tokens(client_a, http, stores, tenants):
    body = {"grader": SCORE_MODEL, "model_sample": "Paris", "item": {"label": "Paris"}}
    raw = post(http, tenants["a"], "run", body)
    assert raw.status_code == 200, raw.text
    result = raw.json()
    validate_operation(result, "runGrader")
    usage = result["model_grader_token_usage_per_model"][TINY]
    assert usage["prompt_tokens"] > 10
    assert 1 <= usage["completion_tokens"] <= 4  # max_completions_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["cached_tokens"] == 0
    assert result["metadata"]["token_usage"] == usage["total_tokens"]
    assert result["metadata"]["sampled_model_name"] == TINY
    # The tiny model writes noise: a number in it is the score (clamped to [0, 1]), else a parse error.
    errors = result["metadata"]["errors"]
    assert 0.0 <= result["reward"] <= 1.0
    if errors["model_grader_parse_error"]:
        assert result["reward"] == 0.0
    assert not errors["model_grader_server_error"]
    again = client_a.fine_tuning.alpha.graders.run(**body)  # temperature 0: the same answer
    assert again.reward == result["reward"]
    assert again.model_grader_token_usage_per_model == result["model_grader_token_usage_per_model"]
    # Each model call is metered as the project's chat completion of that model.
    rows = stores.metadata.list_usage(project_id=tenants["a"].project_id)
    assert [(row.model, row.endpoint, row.prompt_tokens, row.completion_tokens) for row in rows] == [
        (TINY, "chat.completions", usage["prompt_tokens"], usage["completion_tokens"])
    ] * 2


@pytest.mark.parametrize("backend", ["embedded"])
def test_python_graders_are_refused_unless_the_operator_enables_them(http, tenants):
    error = bad_request(http, tenants["a"], "run", {"grader": PYTHON, "model_sample": "x", "item": {"label": "x"}})
    assert (error["param"], error["code"]) == ("grader.type", "unsupported_value")
    assert "TUNEWRIGHT_PYTHON_GRADERS=true" in error["message"]


@pytest.mark.parametrize("backend", ["embedded"])
def test_python_graders_run_when_enabled(request, tmp_path, tiny_dir, stores, tenants, sdk):
    enabled = training_settings(request, tmp_path, "embedded", tiny_dir)
    enabled.python_graders = True
    enabled.python_grader_timeout_s = 30
    app = create_app(enabled, stores, sweep=False)
    with TestClient(app, base_url="http://testserver.local") as http:
        client = openai.OpenAI(
            base_url="http://testserver.local/v1", api_key=tenants["a"].key, http_client=http, max_retries=0
        )
        assert client.fine_tuning.alpha.graders.validate(grader=PYTHON).grader.source == PYTHON["source"]
        result = client.fine_tuning.alpha.graders.run(grader=PYTHON, model_sample="yes", item={"label": "no"})
        assert result.reward == 0.25
        failing = {**PYTHON, "source": "def grade(sample, item):\n    raise KeyError('label')\n"}
        raw = post(http, tenants["a"], "run", {"grader": failing, "model_sample": "x", "item": {}})
        validate_operation(raw.json(), "runGrader")
        errors = raw.json()["metadata"]["errors"]
        assert errors["python_grader_runtime_error"] is True
        assert "KeyError: 'label'" in errors["python_grader_runtime_error_details"]
        syntax = bad_request(http, tenants["a"], "validate", {"grader": {**PYTHON, "source": "def grade(:"}})
        assert syntax["param"] == "grader.source"


@pytest.mark.parametrize("backend", ["embedded"])
def test_the_routes_need_the_fine_tuning_write_scope(admin_client, sdk, stores, tenants):
    project_id = tenants["a"].project_id
    admin = admin_client(
        make_key(stores, organization_id=tenants["a"].organization_id, project_id=None, kind="admin").secret_hash
    )
    accounts = admin.admin.organization.projects.service_accounts

    def client_with(scopes: list[str]) -> openai.OpenAI:
        account = accounts.create(project_id, name="grader bot")
        return sdk(accounts.api_keys.create(account.id, project_id=project_id, scopes=scopes).value)

    reader = client_with(["api.fine_tuning.read"])
    for call in (
        lambda: reader.fine_tuning.alpha.graders.validate(grader=STRING_CHECK),
        lambda: reader.fine_tuning.alpha.graders.run(grader=STRING_CHECK, model_sample="x", item={"label": "x"}),
    ):
        with pytest.raises(openai.AuthenticationError) as caught:
            call()
        assert caught.value.code == "missing_scope"
        assert "api.fine_tuning.write" in caught.value.message
    writer = client_with(["api.fine_tuning.write"])
    assert writer.fine_tuning.alpha.graders.run(grader=STRING_CHECK, model_sample="x", item={"label": "x"}).reward == 1

"""Legacy /v1/completions through the real openai SDK on the tiny model: base and fine-tuned, streamed and not.

Every test runs on SQLite + local files and on PostgreSQL + S3 (moto over HTTP).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import openai
import pytest
from fixtures.chat import ThreadPeak, no_eos
from fixtures.contract import schema_for, validate, validate_error, validate_operation
from fixtures.training import TINY, run_worker, training_settings

from tunewright.inference.local import LocalEngine

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PROMPT = "The capital of France is"
# OpenAI streams `finish_reason: null` until a choice ends, and `usage: null` on every chunk but the last when
# `include_usage` is set; `CreateCompletionResponse` (also the chunk schema) allows neither null.
DEVIATION_STREAM_NULLS = "streamed `text_completion` chunks carry null `finish_reason` and `usage`"
ANYIO_WORKER_THREADS = 40  # anyio's default limit of worker threads, which the handlers share


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Any:
    return training_settings(request, tmp_path, backend, tiny_dir)


def auth(tenant: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.key}"}


def post(http: Any, tenant: Any, body: dict[str, Any]) -> Any:
    return http.post("/v1/completions", headers=auth(tenant), json=body)


def prompt_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def sse_chunks(text: str) -> list[Any]:
    frames = [frame.removeprefix("data: ") for frame in text.split("\n\n") if frame.startswith("data: ")]
    return [frame if frame == "[DONE]" else json.loads(frame) for frame in frames]


def test_a_completion_on_the_base_model_defaults_to_16_tokens(client_a, http, tenants, tokenizer):
    reply = client_a.completions.create(model=TINY, prompt=PROMPT, logit_bias=no_eos(tokenizer))
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    assert reply.model == TINY
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 16
    assert reply.usage.prompt_tokens == prompt_tokens(tokenizer, PROMPT)
    raw = post(http, tenants["a"], {"model": TINY, "prompt": PROMPT, "max_tokens": 3})
    assert raw.status_code == 200
    validate_operation(raw.json(), "createCompletion")


def test_several_prompts_get_choice_sets_numbered_as_openai_does(client_a, tokenizer):
    prompts = ["One", "Two three"]
    reply = client_a.completions.create(model=TINY, prompt=prompts, n=2, max_tokens=3, seed=5)
    assert [choice.index for choice in reply.choices] == [0, 1, 2, 3]
    assert reply.usage.prompt_tokens == sum(prompt_tokens(tokenizer, p) for p in prompts)
    again = client_a.completions.create(model=TINY, prompt=prompts, n=2, max_tokens=3, seed=5)
    assert [c.text for c in again.choices] == [c.text for c in reply.choices]
    ids = tokenizer("One", add_special_tokens=False)["input_ids"]
    by_ids = client_a.completions.create(model=TINY, prompt=[ids], max_tokens=3, seed=5)
    assert by_ids.choices[0].text == reply.choices[0].text


def test_echo_prepends_the_prompt_and_logprobs_cover_each_token(client_a):
    echoed = client_a.completions.create(model=TINY, prompt=PROMPT, echo=True, max_tokens=3, temperature=0)
    plain = client_a.completions.create(model=TINY, prompt=PROMPT, max_tokens=3, temperature=0)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    scored = client_a.completions.create(model=TINY, prompt=PROMPT, logprobs=2, max_tokens=3, temperature=0)
    logprobs = scored.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 3
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)


def test_streaming_sends_text_chunks_usage_then_done(client_a, http, tenants, tokenizer):
    body = {"model": TINY, "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "logit_bias": no_eos(tokenizer)}
    whole = client_a.completions.create(**body).choices[0].text
    chunks = list(client_a.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 5
    raw = post(http, tenants["a"], {**body, "stream": True, "stream_options": {"include_usage": True}})
    frames = sse_chunks(raw.text)
    assert frames[-1] == "[DONE]"
    for chunk in frames[:-1]:
        assert chunk["object"] == "text_completion"
        assert "usage" in chunk
        for choice in chunk["choices"]:
            choice["finish_reason"] = choice["finish_reason"] or "stop"  # DEVIATION_STREAM_NULLS
        if chunk["usage"] is None:
            del chunk["usage"]  # DEVIATION_STREAM_NULLS
        validate(chunk, schema_for("CreateCompletionResponse"))


@pytest.mark.parametrize("backend", ["embedded"])  # the engine's threads: the stores play no part
def test_many_prompts_start_no_thread_per_prompt(client_a, tenants, monkeypatch):
    client_a.completions.create(model=TINY, prompt=PROMPT, max_tokens=1)  # the model and the worker threads are up
    projects = []
    submit = LocalEngine.submit

    def recording(engine: LocalEngine, request: Any, sink: Any, *, cancelled: Any) -> None:
        projects.append(request.project_id)
        submit(engine, request, sink, cancelled=cancelled)

    monkeypatch.setattr(LocalEngine, "submit", recording)
    prompts = [f"Prompt number {k}:" for k in range(300)]
    before = threading.active_count()
    with ThreadPeak() as threads:
        reply = client_a.completions.create(model=TINY, prompt=prompts, max_tokens=3)
    assert [choice.index for choice in reply.choices] == list(range(300))
    assert threads.most - before <= ANYIO_WORKER_THREADS + 1  # the sampler; never one per prompt
    assert projects == [tenants["a"].project_id] * 300  # whose turn the rows take in the scheduler


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"suffix": "end"}, "suffix", "unsupported_parameter"),
        ({"best_of": 3}, "best_of", "unsupported_parameter"),
        ({"best_of": 1, "n": 2}, "best_of", "invalid_value"),
        ({"echo": True, "logprobs": 1}, "logprobs", "unsupported_parameter"),
        ({"logprobs": 6}, "logprobs", "invalid_value"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"temperature": -1}, "temperature", "invalid_value"),
        ({"logit_bias": {"\u00b2": 1}}, "logit_bias", "invalid_value"),  # "²": str.isdigit(), yet no int
        ({"logit_bias": {"\u0661": 1}}, "logit_bias", "invalid_value"),  # Arabic-Indic one: int() reads 1
        ({"logit_bias": {"-1": 1}}, "logit_bias", "invalid_value"),
        ({"prompt": ["a", [1, 2]]}, "prompt", "invalid_value"),
        ({"prompt": [[10**6]]}, "prompt", "invalid_value"),
        ({"max_tokens": 100_000}, "prompt", "context_length_exceeded"),
        ({"prompt": ["a"] * 2049}, "prompt", "invalid_value"),  # more than TUNEWRIGHT_MAX_CHOICES_PER_REQUEST
        ({"prompt": ["a"] * 17, "n": 128}, "n", "invalid_value"),
        ({"prompt": [[1]] * 1025, "n": 2, "best_of": 2}, "n", "invalid_value"),
        ({"bar": 1}, "bar", "unknown_parameter"),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_invalid_or_unsupported_parameters_are_400_naming_them(http, tenants, extra, param, code):
    raw = post(http, tenants["a"], {"model": TINY, "prompt": PROMPT, **extra})
    assert raw.status_code == 400, raw.text
    validate_error(raw.json())
    assert (raw.json()["error"]["param"], raw.json()["error"]["code"]) == (param, code)


def test_fine_tuned_models_complete_for_their_tenant_only_and_usage_is_metered(
    client_a, client_b, stores, settings, tenants
):
    data = (ASSETS / "valid_prompt_completion.jsonl").read_bytes()
    training = client_a.files.create(file=("train.jsonl", data), purpose="fine-tune")
    job = client_a.fine_tuning.jobs.create(model=TINY, training_file=training.id, hyperparameters={"n_epochs": 1})
    assert run_worker(settings, stores) == ["succeeded"]
    model = client_a.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    reply = client_a.completions.create(model=model, prompt=PROMPT, max_tokens=2)
    assert reply.model == model
    list(client_a.completions.create(model=model, prompt=PROMPT, max_tokens=2, stream=True))
    with pytest.raises(openai.NotFoundError) as err:
        client_b.completions.create(model=model, prompt=PROMPT)
    assert err.value.code == "model_not_found"
    rows = stores.metadata.list_usage(project_id=tenants["a"].project_id)
    assert [(r.endpoint, r.streamed, r.model, r.base_model) for r in rows] == [
        ("completions", False, model, TINY),
        ("completions", True, model, TINY),
    ]
    assert rows[0].completion_tokens == reply.usage.completion_tokens
    assert rows[0].prompt_tokens == reply.usage.prompt_tokens

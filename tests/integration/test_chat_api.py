"""/v1/chat/completions through the real openai SDK on the tiny model: base and fine-tuned, streamed and not.

Every test runs on SQLite + local files and on PostgreSQL + S3 (moto over HTTP). Fine-tuned models are trained
by the real worker; the engine is a `LocalEngine` handed to the app, so tests can look into it (the legacy
completions suite runs on the engine the app builds itself on first use).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import openai
import pytest
from fixtures.chat import no_eos, rendered_prompt_tokens, stream_then_disconnect
from fixtures.contract import schema_for, validate, validate_error, validate_operation
from fixtures.models import make_model
from fixtures.training import TINY, train_tiny, training_settings
from litestar.testing import TestClient

from tunewright.api.app import create_app
from tunewright.inference.local import LocalEngine

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Any:
    return training_settings(request, tmp_path, backend, tiny_dir)


@pytest.fixture
def engine(settings: Any, stores: Any) -> Iterator[LocalEngine]:
    built = LocalEngine(settings, stores.blobs)
    yield built
    built.close()


@pytest.fixture
def app(settings: Any, stores: Any, engine: LocalEngine) -> Any:
    return create_app(settings, stores, engine=engine, sweep=False)


def auth(tenant: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.key}"}


def post(http: TestClient[Any], tenant: Any, body: dict[str, Any]) -> Any:
    return http.post("/v1/chat/completions", headers=auth(tenant), json=body)


def sse_chunks(text: str) -> list[Any]:
    """The JSON payloads of an event stream, then the literal `[DONE]`."""
    frames = [frame.removeprefix("data: ") for frame in text.split("\n\n") if frame.startswith("data: ")]
    return [frame if frame == "[DONE]" else json.loads(frame) for frame in frames]


# ------------------------------------------------------------------------------------------ base model


def test_chat_on_the_base_model_answers_in_openai_shape(client_a, http, tenants, tokenizer):
    reply = client_a.chat.completions.create(model=TINY, messages=HELLO, max_tokens=5, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == TINY
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5
    assert reply.usage.prompt_tokens == rendered_prompt_tokens(tokenizer, HELLO)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5
    raw = post(http, tenants["a"], {"model": TINY, "messages": HELLO, "max_tokens": 3})
    assert raw.status_code == 200
    validate_operation(raw.json(), "createChatCompletion")
    assert set(raw.json()) == {"id", "object", "created", "model", "choices", "usage"}


def test_n_choices_are_numbered_and_the_same_seed_gives_the_same_texts(client_a):
    def ask() -> list[str]:
        reply = client_a.chat.completions.create(
            model=TINY, messages=HELLO, n=3, seed=7, temperature=1, max_completion_tokens=8
        )
        assert [choice.index for choice in reply.choices] == [0, 1, 2]
        return [choice.message.content for choice in reply.choices]

    first = ask()
    assert ask() == first
    assert len(set(first)) > 1  # choice i samples with seed + i


@pytest.mark.parametrize("backend", ["embedded"])  # the engine's sampling: the stores play no part
def test_a_vanishing_temperature_or_top_p_samples_as_greedy(client_a, http, tenants, tokenizer):
    body = {"model": TINY, "messages": HELLO, "max_tokens": 8, "seed": 5, "logit_bias": no_eos(tokenizer)}
    greedy = client_a.chat.completions.create(**body, temperature=0).choices[0].message.content
    for extra in ({"temperature": 1e-45}, {"temperature": 1e-300}, {"temperature": 5e-324}, {"top_p": 1e-45}):
        reply = client_a.chat.completions.create(**body, **extra)
        assert reply.choices[0].message.content == greedy, extra
    huge = post(http, tenants["a"], {**body, "temperature": 1e308})
    assert (huge.status_code, huge.json()["error"]["param"]) == (400, "temperature")


def test_a_stop_sequence_ends_the_text_before_it(client_a, tokenizer):
    body = {"model": TINY, "messages": HELLO, "seed": 3, "max_tokens": 12, "logit_bias": no_eos(tokenizer)}
    text = client_a.chat.completions.create(**body).choices[0].message.content
    stop = next(char for char in text[1:] if char.isascii() and char.strip())
    stopped = client_a.chat.completions.create(**body, stop=[stop, "never-seen"])
    assert stopped.choices[0].message.content == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_streaming_sends_role_content_finish_usage_then_done(client_a, http, tenants, tokenizer):
    body = {"model": TINY, "messages": HELLO, "temperature": 0, "max_tokens": 6}
    whole = client_a.chat.completions.create(**body).choices[0].message.content
    chunks = list(client_a.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == rendered_prompt_tokens(tokenizer, HELLO)
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1

    raw = post(http, tenants["a"], {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert raw.headers["content-type"].startswith("text/event-stream")
    frames = sse_chunks(raw.text)
    assert frames[-1] == "[DONE]"
    for chunk in frames[:-1]:
        validate(chunk, schema_for("CreateChatCompletionStreamResponse"))
        assert chunk["object"] == "chat.completion.chunk"
        assert "usage" in chunk
    assert frames[-3]["choices"][0]["delta"] == {}
    assert frames[-2]["choices"] == []


def test_a_stream_without_include_usage_has_no_usage_field(http, tenants):
    raw = post(http, tenants["a"], {"model": TINY, "messages": HELLO, "max_tokens": 3, "stream": True, "n": 2})
    frames = sse_chunks(raw.text)
    assert frames[-1] == "[DONE]"
    assert all("usage" not in chunk for chunk in frames[:-1])
    finishes = [c["choices"][0] for c in frames[:-1] if c["choices"][0]["finish_reason"]]
    assert sorted(choice["index"] for choice in finishes) == [0, 1]


def test_logprobs_come_per_token(client_a):
    reply = client_a.chat.completions.create(
        model=TINY, messages=HELLO, max_tokens=4, logprobs=True, top_logprobs=2, temperature=0
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == 4
    assert all(len(entry.top_logprobs) == 2 for entry in content)


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"temperature": 2.5}, "temperature", "invalid_value"),
        ({"top_p": 1.5}, "top_p", "invalid_value"),
        ({"n": 0}, "n", "invalid_value"),
        ({"n": 129}, "n", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"presence_penalty": -3}, "presence_penalty", "invalid_value"),
        ({"frequency_penalty": 2.5}, "frequency_penalty", "invalid_value"),
        ({"logit_bias": {"5": 101}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"x": 1}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"\u00b2": 1}}, "logit_bias", "invalid_value"),  # "²": str.isdigit(), yet no int
        ({"logit_bias": {"\u0661": 1}}, "logit_bias", "invalid_value"),  # Arabic-Indic one: int() reads 1
        ({"logit_bias": {"\uff11": 1}}, "logit_bias", "invalid_value"),  # fullwidth one
        ({"logit_bias": {" 1": 1}}, "logit_bias", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "invalid_value"),
        ({"top_logprobs": 2}, "logprobs", "invalid_value"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "invalid_value"),
        ({"foo": 1}, "foo", "unknown_parameter"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"response_format": {"type": "json_object"}}, "response_format", "invalid_value"),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice", "invalid_value"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", "invalid_value"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction", "unsupported_parameter"),
        ({"web_search_options": {}}, "web_search_options", "unsupported_parameter"),
        ({"reasoning_effort": "low"}, "reasoning_effort", "unsupported_parameter"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"store": True}, "store", "unsupported_parameter"),
        ({"messages": []}, "messages", "invalid_value"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "invalid_value"),
        ({"max_tokens": 100_000}, "messages", "context_length_exceeded"),
    ],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_invalid_or_unsupported_parameters_are_400_naming_them(http, tenants, extra, param, code):
    raw = post(http, tenants["a"], {"model": TINY, "messages": HELLO, **extra})
    assert raw.status_code == 400, raw.text
    validate_error(raw.json())
    assert (raw.json()["error"]["param"], raw.json()["error"]["code"]) == (param, code)


@pytest.mark.parametrize("backend", ["embedded"])  # a check before any store or model is read
def test_more_choices_than_the_server_generates_per_request_are_400_naming_n(settings, stores, tenants):
    app = create_app(msgspec.structs.replace(settings, max_choices_per_request=4), stores, sweep=False)
    with TestClient(app, base_url="http://testserver.local") as http:
        raw = post(http, tenants["a"], {"model": TINY, "messages": HELLO, "n": 5})
        assert post(http, tenants["a"], {"model": TINY, "messages": HELLO, "n": 4, "max_tokens": 1}).status_code == 200
    assert raw.status_code == 400, raw.text
    validate_error(raw.json())
    assert (raw.json()["error"]["param"], raw.json()["error"]["code"]) == ("n", "invalid_value")
    assert "at most 4" in raw.json()["error"]["message"]


def test_an_image_part_is_refused_naming_it(client_a):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    with pytest.raises(openai.BadRequestError) as err:
        client_a.chat.completions.create(model=TINY, messages=messages)
    assert err.value.param == "messages[0].content[0].type"


def test_harmless_fields_are_accepted(client_a, tokenizer):
    reply = client_a.chat.completions.create(
        model=TINY,
        messages=[{"role": "developer", "content": "Be brief."}, *HELLO],
        max_tokens=2,
        logit_bias=no_eos(tokenizer),
        user="u-1",
        metadata={"k": "v"},
        store=False,
        service_tier="auto",
        safety_identifier="s-1",
        prompt_cache_key="c-1",
        parallel_tool_calls=False,
        response_format={"type": "text"},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice="auto",
    )
    assert reply.usage.completion_tokens == 2


# ------------------------------------------------------------------------------------ model access


def test_unknown_foreign_and_deleted_models_are_404_model_not_found(client_a, client_b, stores, tenants):
    name = make_model(stores, tenants["a"], name=f"ft:{TINY}:acme:sfx:Zz9yXw8v", base=TINY)
    for client, model in ((client_a, "gpt-nope"), (client_b, name)):
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model=model, messages=HELLO)
        assert err.value.code == "model_not_found"
        assert err.value.body["message"] == f"The model `{model}` does not exist or you do not have access to it."
        validate_error(err.value.response.json())
    client_a.models.delete(name)
    with pytest.raises(openai.NotFoundError) as err:
        client_a.chat.completions.create(model=name, messages=HELLO)
    assert err.value.code == "model_not_found"


def test_fine_tuned_checkpoint_and_shared_models_answer_their_own_tenants_only(
    client_a, client_b, sdk, http, stores, settings, tenants, engine, tokenizer
):
    job = train_tiny(client_a, stores, settings, n_epochs=2)
    model = job.fine_tuned_model
    checkpoint = client_a.fine_tuning.jobs.checkpoints.list(job.id).data[-1].fine_tuned_model_checkpoint
    assert checkpoint.endswith(":ckpt-step-3")
    for name in (model, checkpoint):
        reply = client_a.chat.completions.create(model=name, messages=HELLO, max_tokens=3)
        assert reply.model == name
        assert reply.usage.completion_tokens <= 3
    streamed = list(
        client_a.chat.completions.create(
            model=model, messages=HELLO, max_tokens=3, stream=True, logit_bias=no_eos(tokenizer)
        )
    )
    assert streamed[-1].choices[0].finish_reason == "length"
    validate_operation(
        post(http, tenants["a"], {"model": model, "messages": HELLO, "max_tokens": 2}).json(), "createChatCompletion"
    )

    with pytest.raises(openai.NotFoundError):
        client_b.chat.completions.create(model=model, messages=HELLO)
    client_a2 = sdk(tenants["a2"].key)
    with pytest.raises(openai.NotFoundError):
        client_a2.chat.completions.create(model=model, messages=HELLO)
    client_a.fine_tuning.checkpoints.permissions.create(model, project_ids=[tenants["a2"].project_id])
    assert client_a2.chat.completions.create(model=model, messages=HELLO, max_tokens=2).model == model

    assert checkpoint in engine.adapter_states()
    client_a.models.delete(model)  # its checkpoint models go with it
    for name in (model, checkpoint):
        with pytest.raises(openai.NotFoundError):
            client_a.chat.completions.create(model=name, messages=HELLO)
        assert name not in engine.adapter_states()


def test_each_request_records_one_usage_row(client_a, stores, tenants, tokenizer):
    ban_eos = no_eos(tokenizer)  # a sampled end of text would make the counts random
    client_a.chat.completions.create(model=TINY, messages=HELLO, max_tokens=4, n=2, logit_bias=ban_eos)
    list(client_a.chat.completions.create(model=TINY, messages=HELLO, max_tokens=3, stream=True, logit_bias=ban_eos))
    # A stream's row is written once its last frame is sent, which the client may read first: wait for it.
    deadline = time.monotonic() + 10
    while len(rows := stores.metadata.list_usage(project_id=tenants["a"].project_id)) < 2:
        assert time.monotonic() < deadline, f"the streamed request's usage row never came: {rows}"
        time.sleep(0.02)
    prompt = rendered_prompt_tokens(tokenizer, HELLO)
    assert [(r.endpoint, r.streamed, r.prompt_tokens, r.completion_tokens) for r in rows] == [
        ("chat.completions", False, prompt, 8),
        ("chat.completions", True, prompt, 3),
    ]
    assert all(r.api_key_id == tenants["a"].key_id and r.model == TINY == r.base_model for r in rows)
    assert all(r.latency_ms >= 0 and r.id.startswith("usage_") for r in rows)


def test_a_client_that_disconnects_mid_stream_stops_generation(app, engine, stores, tenants, tokenizer):
    """Driven through raw ASGI: the client sends `http.disconnect` after three body frames."""
    body = {"model": TINY, "messages": HELLO, "max_tokens": 400, "stream": True, "logit_bias": no_eos(tokenizer)}
    frames = stream_then_disconnect(app, tenants["a"].key, body)
    assert b"[DONE]" not in b"".join(frames)
    deadline = time.monotonic() + 30
    while engine.active_rows():
        assert time.monotonic() < deadline, "generation kept running after the client left"
        time.sleep(0.05)
    (row,) = stores.metadata.list_usage(project_id=tenants["a"].project_id)
    assert row.streamed
    assert 0 < row.completion_tokens < 400


COLOURS = ["red", "blue", "green", "gold", "pink", "grey", "teal", "plum", "navy", "lime", "rust", "sand"]
TARGET = "Zorblat"


def test_a_tuned_adapter_really_changes_the_output(client_a, stores, settings):
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"colour of {colour}?"},
                    {"role": "assistant", "content": TARGET},
                ]
            }
        )
        for colour in COLOURS
    ]
    job = train_tiny(client_a, stores, settings, "\n".join(lines).encode(), n_epochs=20, learning_rate_multiplier=8)

    def answer(model: str) -> str:
        reply = client_a.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "colour of teal?"}], temperature=0, max_tokens=8
        )
        return reply.choices[0].message.content

    assert answer(job.fine_tuned_model) == TARGET
    assert answer(TINY) != TARGET

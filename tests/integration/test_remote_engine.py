"""The remote engine against a real `tunewright inference` node on loopback, through the real openai SDK.

Tests that need a node start it as a subprocess over the test's blob store (settings passed as `TUNEWRIGHT_*`
variables, as `worker_process` does, but no database: a node never opens one; it has its own data dir for its
adapter cache), and build the API in-process with `RemoteEngine` pointing at it. The node speaks OpenAI's protocol
with vLLM's LoRA-loading additions, so these tests drive the same client code a vLLM server gets. Tests of
fine-tuned models run on SQLite + local files and on PostgreSQL + S3; base-model tests only on the first.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import openai
import pytest
from fixtures.app import backend_settings
from fixtures.chat import no_eos, rendered_prompt_tokens, stream_then_disconnect
from fixtures.contract import validate_error, validate_operation
from fixtures.models import SMOLLM2
from fixtures.s3 import FAKE_AWS_ENV
from fixtures.server import VENV_BIN, free_port, start_serve, stop_server
from fixtures.training import TINY, TRAINING_SETTINGS, run_worker
from litestar.testing import TestClient

from tunewright.api.app import create_app
from tunewright.inference.local import LocalEngine
from tunewright.inference.remote import RemoteEngine
from tunewright.storage.settings import ENV_PREFIX

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tunewright.storage.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
HELLO = [{"role": "user", "content": "Say hello."}]
TOKEN = "node-test-token"
NODE_SETTINGS = ("blob_url", "s3_endpoint_url", "torch_threads", "inference_token")


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Settings:
    return backend_settings(
        request, tmp_path, backend, base_models={TINY: str(tiny_dir)}, inference_token=TOKEN, **TRAINING_SETTINGS
    )


def start_node(settings: Settings, tmp_path: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """`tunewright inference` on a free loopback port with `settings`; wait until /healthz answers."""
    env = {"HF_HUB_OFFLINE": "1", "PATH": str(VENV_BIN), ENV_PREFIX + "LOG_LEVEL": "WARNING", **FAKE_AWS_ENV}
    env[ENV_PREFIX + "DATA_DIR"] = str(tmp_path / "node")
    env[ENV_PREFIX + "DATABASE_URL"] = "postgresql://nowhere.invalid:1/none"  # a node that opened it would fail
    for name in NODE_SETTINGS:
        value = getattr(settings, name)
        if value is not None:
            env[ENV_PREFIX + name.upper()] = str(value)
    env[ENV_PREFIX + "BASE_MODELS"] = ",".join(f"{k}={v}" for k, v in settings.base_models.items())
    return start_serve(env, tmp_path / "node.log", command="inference")


@pytest.fixture
def node(settings: Settings, stores: Any, tmp_path: Path) -> Iterator[str]:
    """The node's base URL (over the test's migrated stores)."""
    url, process = start_node(settings, tmp_path)
    yield url
    stop_server(process)


def remote_engine(settings: Settings, *urls: str, adapter_dir: str | None = None, blobs: Any = None) -> RemoteEngine:
    changed = msgspec.structs.replace(
        settings, inference_engine="remote", inference_urls=list(urls), inference_adapter_dir=adapter_dir
    )
    return RemoteEngine(changed, blobs)


@pytest.fixture
def app(settings: Settings, stores: Any, node: str) -> Iterator[Any]:
    """The API with a remote engine on the node."""
    engine = remote_engine(settings, node)
    yield create_app(settings, stores, engine=engine, sweep=False)
    engine.close()


def node_get(node: str, path: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(node + path, headers=headers, timeout=60)


@pytest.mark.parametrize("backend", ["embedded"])  # base model only: the stores play no part
def test_base_chat_through_a_node_answers_in_openai_shape_streamed_and_not(client_a, http, tenants, tokenizer):
    body = {"model": TINY, "messages": HELLO, "temperature": 0, "max_tokens": 6, "logit_bias": no_eos(tokenizer)}
    reply = client_a.chat.completions.create(**body)
    assert reply.model == TINY
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 6
    assert reply.usage.prompt_tokens == rendered_prompt_tokens(tokenizer, HELLO)
    raw = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {tenants['a'].key}"}, json=body)
    validate_operation(raw.json(), "createChatCompletion")

    chunks = list(client_a.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("backend", ["embedded"])  # base model only: the stores play no part
def test_completions_through_a_node_streamed_and_not(client_a, tokenizer):
    body = {"model": TINY, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}
    reply = client_a.completions.create(**body, logit_bias=no_eos(tokenizer))
    assert reply.object == "text_completion"
    assert reply.usage.completion_tokens == 5
    streamed = list(client_a.completions.create(**body, logit_bias=no_eos(tokenizer), stream=True))
    assert "".join(chunk.choices[0].text for chunk in streamed) == reply.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"


def train_tiny(client: openai.OpenAI, settings: Settings, stores: Any) -> str:
    """Fine-tune the tiny model for one epoch; return the model name."""
    data = (ASSETS / "valid_chat.jsonl").read_bytes()
    training = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}
    job = client.fine_tuning.jobs.create(model=TINY, training_file=training.id, method=method)
    assert run_worker(settings, stores) == ["succeeded"]
    return client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model


@contextlib.contextmanager
def local_sdk(settings: Settings, stores: Any, key: str) -> Iterator[openai.OpenAI]:
    """The SDK on an in-process API with a local engine (the reference the node's answers must equal)."""
    engine = LocalEngine(settings, stores.blobs)
    try:
        with TestClient(
            create_app(settings, stores, engine=engine, sweep=False), base_url="http://testserver.local"
        ) as h:
            yield openai.OpenAI(base_url="http://testserver.local/v1", api_key=key, http_client=h, max_retries=0)
    finally:
        engine.close()


@pytest.mark.parametrize("shared_dir", [False, True], ids=["blob-store", "shared-adapter-dir"])
def test_a_fine_tuned_model_answers_through_a_node_as_it_does_locally(
    shared_dir, client_a, client_b, stores, settings, tenants, node, tmp_path
):
    """`shared-adapter-dir` is how vLLM gets adapters: the API copies them to a directory the node loads from."""
    model = train_tiny(client_a, settings, stores)
    body = {"model": model, "messages": HELLO, "temperature": 0, "max_tokens": 8}
    adapter_dir = tmp_path / "shared-adapters"
    engine = remote_engine(settings, node, adapter_dir=str(adapter_dir) if shared_dir else None, blobs=stores.blobs)
    app = create_app(settings, stores, engine=engine, sweep=False)
    with TestClient(app, base_url="http://testserver.local") as h:
        remote_sdk = openai.OpenAI(
            base_url="http://testserver.local/v1", api_key=client_a.api_key, http_client=h, max_retries=0
        )
        remote = remote_sdk.chat.completions.create(**body)
        with local_sdk(settings, stores, client_a.api_key) as local:
            assert remote.choices[0].message.content == local.chat.completions.create(**body).choices[0].message.content
        streamed = list(remote_sdk.chat.completions.create(**body, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == remote.choices[0].message.content
        (card,) = [c for c in node_get(node, "/v1/models").json()["data"] if c["id"] == model]
        if shared_dir:
            (copied,) = adapter_dir.iterdir()
            assert card["root"] == str(copied) and (copied / "adapter_model.safetensors").is_file()
        else:
            assert card["root"].startswith("blob://")

        with pytest.raises(openai.NotFoundError) as err:
            client_b.chat.completions.create(**body)
        assert err.value.code == "model_not_found"
        remote_sdk.models.delete(model)
        with pytest.raises(openai.NotFoundError):
            remote_sdk.chat.completions.create(**body)
    engine.close()
    assert model not in {c["id"] for c in node_get(node, "/v1/models").json()["data"]}
    assert not shared_dir or list(adapter_dir.iterdir()) == []


@pytest.mark.parametrize("backend", ["embedded"])  # the engine's bookkeeping; the stores play no part
def test_a_node_that_lost_an_adapter_is_told_to_load_it_again(client_a, stores, settings, tenants, node):
    """As after a node restart: the engine's record says loaded, the node says 404; the request still succeeds."""
    model = train_tiny(client_a, settings, stores)
    body = {"model": model, "messages": HELLO, "temperature": 0, "max_tokens": 4}
    first = client_a.chat.completions.create(**body).choices[0].message.content
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(node + "/v1/unload_lora_adapter", json={"lora_name": model}, headers=auth).status_code == 200
    assert client_a.chat.completions.create(**body).choices[0].message.content == first


@pytest.mark.parametrize("backend", ["embedded"])  # base model only: the stores play no part
def test_sampling_parameters_through_a_node_match_the_local_engine(client_a, settings, stores, tokenizer):
    """n, stop, seed, logprobs and top_logprobs: the node's answers equal the in-process engine's."""
    bias = no_eos(tokenizer)
    sampled = {"model": TINY, "messages": HELLO, "max_tokens": 6, "n": 3, "seed": 7, "temperature": 1.0}
    greedy = {"model": TINY, "messages": HELLO, "max_tokens": 6, "temperature": 0, "logit_bias": bias}
    remote_sampled = client_a.chat.completions.create(**sampled, logit_bias=bias)
    assert [c.index for c in remote_sampled.choices] == [0, 1, 2]
    assert len({c.message.content for c in remote_sampled.choices}) > 1
    again = client_a.chat.completions.create(**sampled, logit_bias=bias)
    assert [c.message.content for c in again.choices] == [c.message.content for c in remote_sampled.choices]
    assert again.usage.completion_tokens == remote_sampled.usage.completion_tokens == 18

    remote_greedy = client_a.chat.completions.create(**greedy, logprobs=True, top_logprobs=3)
    text = remote_greedy.choices[0].message.content
    content = remote_greedy.choices[0].logprobs.content
    assert len(content) == 6 and all(len(entry.top_logprobs) == 3 for entry in content)
    assert "".join(entry.token for entry in content) == text
    stop = text[len(text) // 2 :][:3]
    stopped = client_a.chat.completions.create(**greedy, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]

    with local_sdk(settings, stores, client_a.api_key) as local:
        local_sampled = local.chat.completions.create(**sampled, logit_bias=bias)
        assert [c.message.content for c in local_sampled.choices] == [c.message.content for c in remote_sampled.choices]
        local_greedy = local.chat.completions.create(**greedy, logprobs=True, top_logprobs=3)
        for mine, theirs in zip(content, local_greedy.choices[0].logprobs.content, strict=True):
            assert (mine.token, mine.bytes) == (theirs.token, theirs.bytes)
            assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-4)
            assert [t.token for t in mine.top_logprobs] == [t.token for t in theirs.top_logprobs]
        local_stopped = local.chat.completions.create(**greedy, stop=[stop])
        assert local_stopped.choices[0].message.content == stopped.choices[0].message.content


def active_rows(node: str) -> float:
    """The node's `tunewright_inference_active_rows` gauge."""
    for line in node_get(node, "/metrics").text.splitlines():
        if line.startswith("tunewright_inference_active_rows "):
            return float(line.split()[1])
    raise AssertionError("no active_rows gauge")


@pytest.mark.parametrize("backend", ["embedded"])  # base model only: the stores play no part
def test_the_node_refuses_requests_without_its_token(node):
    body = {"model": TINY, "prompt": [1, 2], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        answer = httpx.post(node + "/v1/completions", json=body, headers=headers, timeout=10)
        assert answer.status_code == 401
        validate_error(answer.json())
        assert answer.json()["error"]["code"] == "invalid_inference_token"
    for path in ("/v1/models", "/metrics"):
        assert node_get(node, path, token=None).status_code == 401
    assert active_rows(node) == 0
    assert httpx.get(node + "/healthz", timeout=10).status_code == 200
    assert httpx.get(node + "/health", timeout=10).status_code == 200


def test_the_node_loads_adapters_by_name_as_vllm_does(node, client_a, settings, stores, tenants, tokenizer, tmp_path):
    """Raw protocol: list, load (blob store and local directory), complete with token ids, unload."""
    model = train_tiny(client_a, settings, stores)
    prefix = stores.metadata.get_model(model, project_id=tenants["a"].project_id).adapter_key
    auth = {"Authorization": f"Bearer {TOKEN}"}
    (card,) = [c for c in node_get(node, "/v1/models").json()["data"] if c["id"] == TINY]
    assert card["object"] == "model" and card["parent"] is None
    assert card["max_model_len"] is None  # known once the node has loaded the model (a listing loads nothing)

    def load(**body: Any) -> httpx.Response:
        return httpx.post(node + "/v1/load_lora_adapter", json=body, headers=auth, timeout=10)

    missing = load(lora_name="x", lora_path=f"blob://{prefix}-nope", base_model_name=TINY)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "lora_path"
    assert load(lora_name="x", lora_path="relative/dir", base_model_name=TINY).status_code == 400
    assert load(lora_name="x", lora_path=f"blob://{prefix}", base_model_name="nope").json()["error"]["param"] == (
        "base_model_name"
    )
    first = load(lora_name="mine", lora_path=f"blob://{prefix}", base_model_name=TINY)
    assert first.status_code == 200 and first.text.startswith("Success")
    assert load(lora_name="mine", lora_path=f"blob://{prefix}", base_model_name=TINY).status_code == 200
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (copy / name).write_bytes(b"".join(stores.blobs.open(f"{prefix}/{name}")))
    taken = load(lora_name="mine", lora_path=str(copy), base_model_name=TINY)
    assert taken.status_code == 400 and "already been loaded" in taken.json()["error"]["message"]
    assert load(lora_name="disk", lora_path=str(copy), base_model_name=TINY).status_code == 200
    listed = {c["id"]: c for c in node_get(node, "/v1/models").json()["data"]}
    assert listed["mine"]["parent"] == TINY and listed["disk"]["root"] == str(copy)

    body = {"prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0, "logprobs": 2, "return_tokens_as_token_ids": True}
    body["logit_bias"] = no_eos(tokenizer)
    answers = {}
    for name in ("mine", "disk"):
        answer = httpx.post(node + "/v1/completions", json={**body, "model": name}, headers=auth, timeout=60).json()
        logprobs = answer["choices"][0]["logprobs"]
        assert all(token.startswith("token_id:") for token in logprobs["tokens"]) and len(logprobs["tokens"]) == 4
        assert all(len(top) == 2 for top in logprobs["top_logprobs"])
        answers[name] = answer["choices"][0]["text"]
    assert answers["mine"] == answers["disk"]
    (card,) = [c for c in node_get(node, "/v1/models").json()["data"] if c["id"] == TINY]
    assert card["max_model_len"] == 512

    assert httpx.post(node + "/v1/unload_lora_adapter", json={"lora_name": "mine"}, headers=auth).status_code == 200
    gone = httpx.post(node + "/v1/completions", json={**body, "model": "mine"}, headers=auth, timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    again = httpx.post(node + "/v1/unload_lora_adapter", json={"lora_name": "mine"}, headers=auth)
    assert again.status_code == 404


@pytest.mark.parametrize("backend", ["embedded"])  # base model only: the stores play no part
def test_a_client_that_disconnects_mid_stream_stops_the_nodes_generation(
    settings, stores, tenants, tmp_path, smollm2_dir
):
    """Driven through raw ASGI: the client sends `http.disconnect` after three body frames.

    The node serves SmolLM2, which takes seconds for 400 tokens on a CPU: the tiny model can finish them all
    between the client's third frame and the look at the node, and then the test would prove nothing.
    """
    slow = msgspec.structs.replace(settings, base_models={**settings.base_models, SMOLLM2: str(smollm2_dir)})
    url, process = start_node(slow, tmp_path)
    engine = remote_engine(slow, url)
    try:
        app = create_app(slow, stores, engine=engine, sweep=False)
        ban_eos = no_eos(engine.tokenizer(SMOLLM2))
        body = {"model": SMOLLM2, "messages": HELLO, "max_tokens": 400, "stream": True, "logit_bias": ban_eos}
        busy: list[float] = []
        frames = stream_then_disconnect(
            app, tenants["a"].key, body, before_leaving=lambda: busy.append(active_rows(url))
        )
        assert busy == [1]
        assert b"[DONE]" not in b"".join(frames)
        deadline = time.monotonic() + 30
        while active_rows(url):
            assert time.monotonic() < deadline, "the node kept generating after the client left"
            time.sleep(0.05)
        (row,) = stores.metadata.list_usage(project_id=tenants["a"].project_id)
        assert 0 < row.completion_tokens < 400
    finally:
        engine.close()
        stop_server(process)


def test_an_unreachable_node_is_a_503_envelope(settings, stores, tenants):
    engine = remote_engine(settings, f"http://127.0.0.1:{free_port()}")
    try:
        with TestClient(
            create_app(settings, stores, engine=engine, sweep=False), base_url="http://testserver.local"
        ) as h:
            answer = h.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {tenants['a'].key}"},
                json={"model": TINY, "messages": HELLO, "max_tokens": 2},
            )
    finally:
        engine.close()
    assert answer.status_code == 503
    validate_error(answer.json())
    assert answer.json()["error"]["code"] == "engine_unavailable"


def test_node_urls_come_comma_separated_and_the_remote_engine_needs_one(tmp_path):
    from tunewright.storage.settings import SettingsError, load_settings

    env = {"TUNEWRIGHT_DATA_DIR": str(tmp_path), "TUNEWRIGHT_INFERENCE_URLS": "http://a:1, http://b:2/,"}
    assert load_settings(env).inference_urls == ["http://a:1", "http://b:2/"]
    assert remote_engine(load_settings(env), *load_settings(env).inference_urls).urls == ["http://a:1", "http://b:2"]
    with pytest.raises(SettingsError, match=r"^TUNEWRIGHT_INFERENCE_URLS: "):
        load_settings({**env, "TUNEWRIGHT_INFERENCE_URLS": "", "TUNEWRIGHT_INFERENCE_ENGINE": "remote"})
    with pytest.raises(SettingsError, match=r"^TUNEWRIGHT_INFERENCE_URLS: "):
        load_settings({**env, "TUNEWRIGHT_INFERENCE_URLS": "ftp://a"})


def test_a_node_without_a_token_refuses_to_listen_beyond_loopback(monkeypatch, capsys):
    from tunewright.clients.cli.main import main

    monkeypatch.setenv("TUNEWRIGHT_INFERENCE_TOKEN", "")
    assert main(["inference", "--host", "0.0.0.0"]) == 2
    assert "TUNEWRIGHT_INFERENCE_TOKEN: required" in capsys.readouterr().err

"""The remote engine against a real `tunewright inference` node on loopback, through the real openai SDK.

Tests that need a node start it as a subprocess over the test's stores (settings passed as `TUNEWRIGHT_*` variables,
as `worker_process` does; the node has its own data dir for its adapter cache), and build the API in-process
with `RemoteEngine` pointing at it. Every test runs on SQLite + local files and on PostgreSQL + S3.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import openai
import pytest
from fixtures.app import backend_settings
from fixtures.contract import validate_error, validate_operation
from fixtures.s3 import FAKE_AWS_ENV
from fixtures.server import VENV_BIN, free_port, stop_server
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
NODE_SETTINGS = ("database_url", "blob_url", "s3_endpoint_url", "torch_threads", "inference_token")


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Settings:
    return backend_settings(
        request, tmp_path, backend, base_models={TINY: str(tiny_dir)}, inference_token=TOKEN, **TRAINING_SETTINGS
    )


def start_node(settings: Settings, tmp_path: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """`tunewright inference` on a free loopback port with `settings`; wait until /healthz answers."""
    env = {"HF_HUB_OFFLINE": "1", "PATH": str(VENV_BIN), ENV_PREFIX + "LOG_LEVEL": "WARNING", **FAKE_AWS_ENV}
    env[ENV_PREFIX + "DATA_DIR"] = str(tmp_path / "node")
    for name in NODE_SETTINGS:
        value = getattr(settings, name)
        if value is not None:
            env[ENV_PREFIX + name.upper()] = str(value)
    env[ENV_PREFIX + "BASE_MODELS"] = ",".join(f"{k}={v}" for k, v in settings.base_models.items())
    port = free_port()
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        command = [str(VENV_BIN / "tunewright"), "inference", "--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"tunewright inference exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return url, process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError(f"tunewright inference did not become healthy:\n{log.read_text()}")
        time.sleep(0.2)


@pytest.fixture
def node(settings: Settings, stores: Any, tmp_path: Path) -> Iterator[str]:
    """The node's base URL (over the test's migrated stores)."""
    url, process = start_node(settings, tmp_path)
    yield url
    stop_server(process)


def remote_engine(settings: Settings, *urls: str) -> RemoteEngine:
    return RemoteEngine(msgspec.structs.replace(settings, inference_engine="remote", inference_urls=list(urls)))


@pytest.fixture
def app(settings: Settings, stores: Any, node: str) -> Iterator[Any]:
    """The API with a remote engine on the node."""
    engine = remote_engine(settings, node)
    yield create_app(settings, stores, engine=engine, sweep=False)
    engine.close()


def node_get(node: str, path: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(node + path, headers=headers, timeout=10)


def no_eos(tokenizer: Any) -> dict[str, int]:
    ends = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return {str(token): -100 for token in ends if token is not None}


def rendered_prompt_tokens(tokenizer: Any, messages: list[dict[str, Any]]) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


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


def test_completions_through_a_node_streamed_and_not(client_a, tokenizer):
    body = {"model": TINY, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}
    reply = client_a.completions.create(**body, logit_bias=no_eos(tokenizer))
    assert reply.object == "text_completion"
    assert reply.usage.completion_tokens == 5
    streamed = list(client_a.completions.create(**body, logit_bias=no_eos(tokenizer), stream=True))
    assert "".join(chunk.choices[0].text for chunk in streamed) == reply.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"


def test_a_fine_tuned_model_answers_through_a_node_as_it_does_locally(client_a, client_b, stores, settings):
    data = (ASSETS / "valid_chat.jsonl").read_bytes()
    training = client_a.files.create(file=("train.jsonl", data), purpose="fine-tune")
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}
    job = client_a.fine_tuning.jobs.create(model=TINY, training_file=training.id, method=method)
    assert run_worker(settings, stores) == ["succeeded"]
    model = client_a.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    body = {"model": model, "messages": HELLO, "temperature": 0, "max_tokens": 8}

    remote = client_a.chat.completions.create(**body)
    local_engine = LocalEngine(settings, stores)
    try:
        local_app = create_app(settings, stores, engine=local_engine, sweep=False)
        with TestClient(local_app, base_url="http://testserver.local") as local_http:
            local = openai.OpenAI(
                base_url="http://testserver.local/v1", api_key=client_a.api_key, http_client=local_http, max_retries=0
            )
            assert remote.choices[0].message.content == local.chat.completions.create(**body).choices[0].message.content
    finally:
        local_engine.close()
    streamed = list(client_a.chat.completions.create(**body, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == remote.choices[0].message.content

    with pytest.raises(openai.NotFoundError) as err:
        client_b.chat.completions.create(**body)
    assert err.value.code == "model_not_found"
    client_a.models.delete(model)
    with pytest.raises(openai.NotFoundError):
        client_a.chat.completions.create(**body)


def test_the_node_refuses_requests_without_its_token(node):
    request = {"target": {"base_model": TINY}, "prompt_ids": [1, 2], "params": {"max_new_tokens": 2}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        answer = httpx.post(node + "/internal/generate", json=request, headers=headers, timeout=10)
        assert answer.status_code == 401
        assert json.loads(answer.text)["error"]["code"] == "invalid_inference_token"
    assert node_get(node, "/internal/stats", token=None).status_code == 401
    assert node_get(node, "/internal/stats").json() == {"active_rows": 0}
    assert node_get(node, f"/internal/models/{TINY}").json()["context_length"] > 0
    assert node_get(node, "/internal/models/nope").status_code == 404
    assert httpx.get(node + "/healthz", timeout=10).status_code == 200


def test_a_client_that_disconnects_mid_stream_stops_the_nodes_generation(app, node, stores, tenants, tokenizer):
    """Driven through raw ASGI: the client sends `http.disconnect` after three body frames."""
    import anyio

    body = {"model": TINY, "messages": HELLO, "max_tokens": 400, "stream": True, "logit_bias": no_eos(tokenizer)}
    frames: list[bytes] = []
    busy: list[int] = []

    async def drive() -> None:
        gone = anyio.Event()
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                frames.append(message["body"])
                if len(frames) == 3:
                    stats = await anyio.to_thread.run_sync(node_get, node, "/internal/stats")
                    busy.append(stats.json()["active_rows"])
                    gone.set()

        with anyio.fail_after(60):
            await app(asgi_scope(tenants["a"].key), receive, send)

    anyio.run(drive)
    assert busy == [1]
    assert b"[DONE]" not in b"".join(frames)
    deadline = time.monotonic() + 30
    while node_get(node, "/internal/stats").json()["active_rows"]:
        assert time.monotonic() < deadline, "the node kept generating after the client left"
        time.sleep(0.05)
    (row,) = stores.metadata.list_usage(project_id=tenants["a"].project_id)
    assert 0 < row.completion_tokens < 400


def asgi_scope(key: str) -> dict[str, Any]:
    headers = [
        (b"host", b"testserver.local"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {key}".encode()),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("testserver.local", 80),
        "state": {},
    }


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

"""The remote engine's reading and writing of the OpenAI protocol, on the bodies vLLM and nodes send.

The engine against a live node is tested in `tests/integration/test_remote_engine.py`; here are the shapes a
node never sends but vLLM does (its flat error objects of older releases, integer error codes, the chosen token
added to the alternatives), built as the HTTP responses the client would read.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import pytest
from fixtures.app import make_settings

from tunewright.inference.engine import (
    AdapterRef,
    BlockingEvents,
    EngineError,
    GenerationRequest,
    ModelTarget,
    SamplingParams,
)
from tunewright.inference.remote import RemoteEngine
from tunewright.inference.remote_stream import CompletionEvents
from tunewright.inference.remote_wire import completion_body, server_error

if TYPE_CHECKING:
    from collections.abc import Iterator

URL = "http://node:8000/v1/completions"
WAIT_S = 30  # a safety net against a hang, never a measurement


def response(status: int, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return httpx.Response(status, content=content, request=httpx.Request("POST", URL))


def sse(*chunks: Any) -> httpx.Response:
    lines = [b"data: " + (c if isinstance(c, bytes) else msgspec.json.encode(c)) + b"\n\n" for c in chunks]
    return response(200, b"".join(lines))


def test_vllm_error_objects_keep_their_message_and_status_and_an_integer_code_becomes_the_type():
    nested = server_error(response(400, {"error": {"message": "bad n", "type": "BadRequestError", "code": 400}}))
    assert (nested.message, nested.code, nested.status) == ("bad n", "BadRequestError", 400)
    flat = server_error(
        response(
            404, {"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404}
        )
    )
    assert (flat.message, flat.code, flat.status) == ("The model `x` does not exist.", "NotFoundError", 404)
    ours = server_error(response(400, {"error": {"message": "m", "type": "t", "param": "n", "code": "invalid_value"}}))
    assert (ours.code, ours.param) == ("invalid_value", "n")


def test_a_refused_token_is_engine_unavailable_and_garbage_is_a_server_error():
    assert server_error(response(401, {"error": {"message": "no"}})).code == "engine_unavailable"
    garbage = server_error(response(502, b"<html>bad gateway</html>"))
    assert (garbage.code, garbage.status) == ("server_error", 500)


def test_the_completion_body_names_the_adapter_and_asks_for_token_ids():
    params = SamplingParams(
        max_new_tokens=5, temperature=0.5, seed=3, stop=("\n",), logit_bias={7: -100.0}, top_logprobs=2, logprobs=True
    )
    adapter = AdapterRef(name="ft:tiny:acme:x:abc", blob_prefix="p/a")
    request = GenerationRequest(
        target=ModelTarget(base_model="tiny", adapter=adapter), prompt_ids=[1, 2], params=params, n=2, project_id="p1"
    )
    body = completion_body(request)
    assert body["user"] == "p1"  # a node shares its batch places among projects by it
    assert body["model"] == "ft:tiny:acme:x:abc"
    assert body["prompt"] == [1, 2] and body["n"] == 2 and body["max_tokens"] == 5
    assert body["stream"] is True and body["return_tokens_as_token_ids"] is True
    assert body["logprobs"] == 2 and body["seed"] == 3 and body["stop"] == ["\n"]
    assert body["logit_bias"] == {"7": -100}
    plain = completion_body(
        GenerationRequest(
            target=ModelTarget(base_model="tiny"), prompt_ids=[1], params=SamplingParams(max_new_tokens=1)
        )
    )
    assert plain["model"] == "tiny" and plain["logprobs"] == 0
    assert not {"seed", "stop", "logit_bias", "presence_penalty", "user"} & set(plain)


def events(answer: httpx.Response, tokenizer: Any, **params: Any) -> list[Any]:
    return list(CompletionEvents(answer, threading.Event(), tokenizer, SamplingParams(max_new_tokens=8, **params)))


def test_chunks_become_events_with_the_token_ids_they_name(tokenizer):
    hello = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    names = [f"token_id:{t}" for t in hello]
    answer = sse(
        {"choices": [{"index": 1, "text": "hello", "logprobs": {"tokens": names[:1], "token_logprobs": [-0.5]}}]},
        {
            "choices": [
                {
                    "index": 1,
                    "text": " world",
                    "logprobs": {"tokens": names[1:], "token_logprobs": [-0.1] * (len(names) - 1)},
                    "finish_reason": "length",
                }
            ]
        },
        {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": len(names), "total_tokens": 9}},
        b"[DONE]",
    )
    got = events(answer, tokenizer)
    assert [e.index for e in got] == [1, 1]
    assert [t for e in got for t in e.token_ids] == hello
    assert [e.finish_reason for e in got] == [None, "length"]
    assert all(e.logprobs is None for e in got)


def test_alternatives_are_cut_to_the_asked_number_best_first(tokenizer):
    """vLLM adds the chosen token to `top_logprobs` when it is not among the best: it must not show."""
    a, b, c = (tokenizer.convert_tokens_to_ids(t) for t in ("a", "b", "c"))
    top = {f"token_id:{c}": -3.0, f"token_id:{a}": -0.2, f"token_id:{b}": -1.0}
    chunk = {
        "choices": [
            {
                "index": 0,
                "text": "c",
                "logprobs": {"tokens": [f"token_id:{c}"], "token_logprobs": [-3.0], "top_logprobs": [top]},
                "finish_reason": "stop",
            }
        ]
    }
    (event,) = events(sse(chunk, b"[DONE]"), tokenizer, logprobs=True, top_logprobs=2)
    (entry,) = event.logprobs
    assert (entry.token_id, entry.token, entry.logprob, entry.bytes) == (c, "c", -3.0, [ord("c")])
    assert [(t.token, t.logprob) for t in entry.top_logprobs] == [("a", -0.2), ("b", -1.0)]


def test_an_error_frame_mid_stream_raises_and_a_server_without_token_ids_is_refused(tokenizer):
    for chunk in (
        {"index": 0, "text": "x"},
        {"index": 0, "text": "x", "logprobs": {"tokens": ["x"], "token_logprobs": [0]}},
    ):
        with pytest.raises(EngineError, match="does not return token ids"):
            events(sse({"choices": [chunk]}), tokenizer)
    broken = sse({"error": {"message": "boom", "type": "InternalServerError", "code": 500}})
    with pytest.raises(EngineError, match="boom") as err:
        events(broken, tokenizer)
    assert err.value.status == 500


def test_an_unreadable_chunk_is_a_server_error(tokenizer):
    with pytest.raises(EngineError, match="unreadable chunk") as err:
        events(sse(b"{not json", b"[DONE]"), tokenizer)
    assert (err.value.code, err.value.status) == ("server_error", 500)


def test_a_cancelled_request_stops_reading(tokenizer):
    cancelled = threading.Event()
    cancelled.set()
    answer = sse(
        {"choices": [{"index": 0, "text": "x", "logprobs": {"tokens": ["token_id:5"], "token_logprobs": [0]}}]}
    )
    assert list(CompletionEvents(answer, cancelled, tokenizer, SamplingParams(max_new_tokens=1))) == []


def test_the_engine_streams_at_most_its_connections_per_server_and_the_next_goes_to_the_other_project(
    tmp_path, tiny_dir
):
    """Six requests of one project and one of another on a server with two connections: two stream at a time,
    and the first connection that frees goes to the other project's request, ahead of the older five."""
    started: queue.Queue[str] = queue.Queue()
    gates: dict[str, threading.Semaphore] = {}
    done = b'data: {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        project = json.loads(request.content)["user"]

        def body() -> Iterator[bytes]:
            started.put(project)
            gates.setdefault(project, threading.Semaphore(0)).acquire(timeout=WAIT_S)
            yield done

        return httpx.Response(200, content=body())

    for project in ("a", "b"):
        gates[project] = threading.Semaphore(0)
    settings = make_settings(
        tmp_path,
        base_models={"tiny": str(tiny_dir)},
        inference_engine="remote",
        inference_urls=["http://node:8000"],
        inference_connections_per_server=2,
    )
    engine = RemoteEngine(settings, client=httpx.Client(transport=httpx.MockTransport(answer)))
    sinks = {project: BlockingEvents(threading.Event()) for project in ("a", "b")}
    try:
        for project in ("a",) * 6 + ("b",):
            request = GenerationRequest(
                target=ModelTarget(base_model="tiny"),
                prompt_ids=[1],
                params=SamplingParams(max_new_tokens=1),
                project_id=project,
            )
            engine.submit(request, sinks[project], cancelled=threading.Event())
        first = [started.get(timeout=WAIT_S) for _ in range(2)]
        assert first == ["a", "a"]
        assert [t.name for t in threading.enumerate()].count("inference-0-3") == 0  # a third never started
        gates["a"].release()
        assert started.get(timeout=WAIT_S) == "b"
        for _ in range(5):
            gates["a"].release()
        gates["b"].release()
        assert [started.get(timeout=WAIT_S) for _ in range(4)] == ["a"] * 4
        assert started.empty()
    finally:
        for gate in gates.values():
            for _ in range(6):
                gate.release()
        engine.close()

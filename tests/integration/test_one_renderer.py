"""Serving asks a model with exactly the tokens training trained it on, up to the start of its reply.

For every chat example in tests/assets (and the DPO inputs, and tool-call conversations), on the tiny model and
on SmolLM2: the token ids `/v1/chat/completions` hands the engine for the conversation before an assistant turn
(sent through the real `openai` SDK) are the first ids the trainer tokenized for the whole example, and the next
id is a trained one. The engine records what the API sends it and answers with an empty completion: what the
model would generate is not what is tested here, the prompt is; its tokenizer is the real engine's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest
from fixtures.app import BASE_URL, make_settings, make_tenant
from fixtures.models import SMOLLM2
from litestar.testing import TestClient

from tunewright.api.app import create_app
from tunewright.inference.engine import GenerationEvent
from tunewright.inference.local import LocalEngine
from tunewright.modeling.chat import ChatTemplateError
from tunewright.modeling.dataset import encode_chat, encode_preference
from tunewright.storage.registry import open_stores
from tunewright.training_files.formats import DataFormat, detect_format, validate_example

if TYPE_CHECKING:
    import threading

    from tunewright.inference.engine import EventSink, GenerationRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
TOOL_CASES = [
    {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
            {"role": "assistant", "content": "It is sunny in Oslo."},
        ],
    },
    {
        "functions": [WEATHER_TOOL["function"]],
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "function_call": CALL["function"]},
            {"role": "function", "name": "get_weather", "content": "Sunny, 21 C"},
            {"role": "assistant", "content": [{"type": "text", "text": "It is "}, {"type": "text", "text": "sunny."}]},
        ],
    },
]


def asset_examples() -> list[tuple[str, dict[str, Any]]]:
    """Every line of tests/assets that is a valid chat or preference example, named `file:line`."""
    found = []
    for path in sorted(ASSETS.glob("*.jsonl")):
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            try:
                obj = json.loads(raw.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if not isinstance(obj, dict):
                continue
            kind = detect_format(obj)
            if kind in (DataFormat.CHAT, DataFormat.PREFERENCE) and not validate_example(obj, number):
                found.append((f"{path.name}:{number}", obj))
    return found


class RecordingEngine:
    """The real local engine's tokenizer and context; `submit` records the prompt and ends the choice."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.prompts: list[list[int]] = []

    def tokenizer(self, base_model: str) -> Any:
        return self.engine.tokenizer(base_model)

    def context_length(self, base_model: str) -> int:
        return self.engine.context_length(base_model)

    def submit(self, request: GenerationRequest, sink: EventSink, *, cancelled: threading.Event) -> None:
        self.prompts.append(list(request.prompt_ids))
        sink.put(GenerationEvent(index=0, finish_reason="stop"))
        sink.put(None)

    def forget(self, adapter_name: str) -> None:
        self.engine.forget(adapter_name)

    def close(self) -> None:
        self.engine.close()


@pytest.fixture(scope="module", params=["tiny-llama", SMOLLM2])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Any:
    """(model id, the tokenizer serving uses, an SDK client of a fresh app, the recording engine)."""
    model = request.param
    base_models = {"tiny-llama": str(tiny_dir)}
    if model == SMOLLM2:
        base_models[SMOLLM2] = str(request.getfixturevalue("smollm2_dir"))  # the session's imported copy
    settings = make_settings(tmp_path_factory.mktemp("render"), base_models=base_models)
    stores = open_stores(settings)
    stores.metadata.migrate()
    engine = RecordingEngine(LocalEngine(settings, stores.blobs))
    tenant = make_tenant(stores, "render")
    app = create_app(settings, stores, engine=engine, sweep=False)
    with TestClient(app, base_url="http://testserver.local") as http:
        client = openai.OpenAI(base_url=BASE_URL, api_key=tenant.key, http_client=http, max_retries=0)
        yield model, engine.tokenizer(model), client, engine
    engine.close()
    stores.close()


def served_prompt(served: Any, messages: list[dict[str, Any]], example: dict[str, Any]) -> list[int]:
    """The ids the API hands the engine for `messages` (weights dropped: they are training-only)."""
    model, _, client, engine = served
    tools = {key: example[key] for key in ("tools", "functions") if key in example}
    plain = [{key: value for key, value in message.items() if key != "weight"} for message in messages]
    client.chat.completions.create(model=model, messages=plain, max_tokens=1, **tools)
    return engine.prompts[-1]


def assert_trained_reply_follows(ids: list[int], mask: list[int], prompt: list[int], where: str) -> None:
    assert ids[: len(prompt)] == prompt, f"{where}: the served prompt is not the trained prefix"
    assert mask[len(prompt)] == 1, f"{where}: the token after the served prompt is not trained"
    assert mask[len(prompt) - 1] == 0, f"{where}: the served prompt ends inside a trained turn"


@pytest.mark.parametrize(("name", "example"), [*asset_examples(), *(("tools", case) for case in TOOL_CASES)])
def test_served_prompt_is_the_trained_prefix(served: Any, name: str, example: dict[str, Any]) -> None:
    _, tokenizer, _, _ = served
    if "messages" not in example:  # a preference line: its prompt is the input conversation
        preference = encode_preference(tokenizer, example, 1)
        assert served_prompt(served, example["input"]["messages"], example["input"]) == preference.prompt, name
        return
    try:
        trained = encode_chat(tokenizer, example, 1)
    except ChatTemplateError as exc:
        # The base model cannot be given this conversation (SmolLM2's template has no tool calls; no model here
        # reads images): serving the conversation up to its last reply is refused too, naming the same field.
        last = max(i for i, m in enumerate(example["messages"]) if m["role"] == "assistant")
        with pytest.raises(openai.BadRequestError) as refused:
            served_prompt(served, example["messages"][:last], example)
        assert refused.value.param == (exc.param or "messages")
        return
    assert trained.mask is not None
    for index, message in enumerate(example["messages"]):
        if message["role"] == "assistant" and message.get("weight", 1) != 0:
            prompt = served_prompt(served, example["messages"][:index], example)
            assert_trained_reply_follows(trained.ids, trained.mask, prompt, f"{name} messages[{index}]")

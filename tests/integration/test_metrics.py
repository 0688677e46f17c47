"""/metrics after a training job and chat requests: tokens, time to first token, queue wait, job duration, adapter
cache, with bounded labels (no ids but projects', and past the project cap, `other`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest
from fixtures.app import backend_settings
from fixtures.training import TINY, TRAINING_SETTINGS, train_tiny
from prometheus_client.parser import text_string_to_metric_families

from tunewright.api.app import create_app
from tunewright.inference.local import LocalEngine

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tunewright.storage.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

HELLO = [{"role": "user", "content": "Say hello."}]
ID_LIKE = re.compile(r"^(ftjob-|chatcmpl-|cmpl-|req_|file-|ftckpt_|key_|ft:)")


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Settings:
    """The tiny model, short training settings, and one project with its own label."""
    overrides = {**TRAINING_SETTINGS, "metrics_max_projects": 1}
    return backend_settings(request, tmp_path, backend, base_models={TINY: str(tiny_dir)}, **overrides)


@pytest.fixture
def engine(settings: Settings, stores: Any) -> Iterator[LocalEngine]:
    built = LocalEngine(settings, stores.blobs)
    yield built
    built.close()


@pytest.fixture
def app(settings: Settings, stores: Any, engine: LocalEngine) -> Any:
    return create_app(settings, stores, engine=engine, sweep=False)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def test_a_training_job_and_chats_show_up_with_bounded_labels(client_a, client_b, http, stores, settings, tenants):
    a = tenants["a"].project_id
    job = train_tiny(client_a, stores, settings)
    first = client_a.chat.completions.create(model=job.fine_tuned_model, messages=HELLO, max_tokens=3)
    reply = client_a.chat.completions.create(model=job.fine_tuned_model, messages=HELLO, max_tokens=4)
    streamed = [
        chunk.usage
        for chunk in client_a.chat.completions.create(
            model=TINY, messages=HELLO, max_tokens=2, stream=True, stream_options={"include_usage": True}
        )
        if chunk.usage is not None
    ]
    # A reply may end early at the model's end-of-sequence token: count what each request reported.
    completions = first.usage.completion_tokens + reply.usage.completion_tokens + streamed[-1].completion_tokens
    other = client_b.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2)  # past the project cap

    found = samples(http.get("/metrics").text)
    tokens = "tunewright_inference_tokens_total"
    assert value(found, tokens, project=a, base_model=TINY, kind="completion") == completions
    assert value(found, tokens, project=a, base_model=TINY, kind="prompt") == 3 * reply.usage.prompt_tokens
    assert value(found, tokens, project="other", base_model=TINY, kind="prompt") == other.usage.prompt_tokens
    first_token = "tunewright_inference_time_to_first_token_seconds_count"
    # A request that ends at once at the end-of-sequence token generated no first token to time.
    generating = [usage.completion_tokens > 0 for usage in (first.usage, reply.usage, streamed[-1], other.usage)]
    assert value(found, first_token, base_model=TINY) == sum(generating)
    assert value(found, "tunewright_training_tokens_total", project=a, base_model=TINY) == job.trained_tokens > 0
    assert value(found, "tunewright_job_queue_wait_seconds_count") == 1
    assert value(found, "tunewright_job_queue_wait_seconds_bucket", le="+Inf") == 1
    assert value(found, "tunewright_job_duration_seconds_count", outcome="succeeded") == 1
    assert value(found, "tunewright_adapter_cache_misses_total") == 1  # loaded for the first chat
    assert value(found, "tunewright_adapter_cache_hits_total") == 1  # still loaded for the second
    assert value(found, "tunewright_adapter_cache_evictions_total", level="memory") == 0

    labels = {(key, v) for _, pairs in found for key, v in pairs}
    assert {v for key, v in labels if key == "project"} == {a, "other"}
    assert not [pair for pair in labels if ID_LIKE.match(pair[1])], "an id is a label value"

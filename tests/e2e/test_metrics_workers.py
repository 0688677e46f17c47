"""/metrics of `tunewright serve --workers 2`: every scrape, whichever worker answers it, reports both workers.

The workers listen on one port, so a scrape reaches one of them. Their own counters (requests, tokens) live in
prometheus_client's multiprocess files, summed by any worker; a project gets the same label in both (the first
`TUNEWRIGHT_METRICS_MAX_PROJECTS` projects created, not the first each worker happens to meet).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from fixtures.app import OPERATOR_KEY
from fixtures.server import start_server, stop_server
from fixtures.training import TINY
from prometheus_client.parser import text_string_to_metric_families

from tunewright.clients.cli.serve import share_metrics
from tunewright.storage.supervision import METRICS_DIR_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHATS = 7
HEALTH_CHECKS = 30
SCRAPES = 5
HELLO = [{"role": "user", "content": "Say hello."}]


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One scrape on a new connection (so any worker may answer it): every sample by (name, labels)."""
    with httpx.Client() as fresh:
        text = fresh.get(f"{url}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def chat(url: str, key: str) -> openai.types.CompletionUsage:
    """One chat on a new connection; its usage."""
    with httpx.Client() as fresh:
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, http_client=fresh, max_retries=0, timeout=120)
        usage = client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2).usage
    assert usage is not None
    return usage


def test_each_scrape_adds_up_both_workers_and_labels_projects_alike(tmp_path: Path, tiny_dir: Path) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {
        "TUNEWRIGHT_ADMIN_KEY": OPERATOR_KEY,
        "TUNEWRIGHT_BASE_MODELS": f"{TINY}={tiny_dir}",
        "TUNEWRIGHT_METRICS_MAX_PROJECTS": "1",
        METRICS_DIR_ENV: str(shared),  # as `serve` names its own temporary one, here where the test can look
    }
    server, process = start_server(tmp_path, env, "--workers", "2")
    try:
        later = server.new_key("globex", "late")  # created after serve's default project: labelled `other`
        admin = openai.OpenAI(base_url=server.base_url, admin_api_key=OPERATOR_KEY, max_retries=0)
        first_project = admin.admin.organization.projects.list(limit=1).data[0].id
        # The later project asks first, so a worker that labelled projects in the order it meets them would give
        # it its own label; every request on a new connection, so that the two workers share them.
        prompt = {first_project: 0, "other": chat(server.url, later).prompt_tokens}
        for index in range(1, CHATS):
            key, label = (later, "other") if index % 3 == 0 else (server.key, first_project)
            prompt[label] += chat(server.url, key).prompt_tokens
        for _ in range(HEALTH_CHECKS):
            with httpx.Client() as fresh:
                assert fresh.get(f"{server.url}/healthz").status_code == 200
        assert len(list(shared.glob("counter_*.db"))) == 2, "both workers served requests"
        seen = [scrape(server.url) for _ in range(SCRAPES)]
    finally:
        stop_server(process)

    health = (
        "tunewright_http_requests_total",
        frozenset({"route": "/healthz", "method": "GET", "status": "200"}.items()),
    )
    completions = frozenset({"route": "/v1/chat/completions", "method": "POST", "status": "200"}.items())
    counted = {seen[0][health]}
    for found in seen:
        counted.add(found[health])  # the same in every scrape: scrapes do not count /healthz
        assert found[("tunewright_http_requests_total", completions)] == CHATS
        tokens = {
            dict(labels)["project"]: value
            for (name, labels), value in found.items()
            if name == "tunewright_inference_tokens_total" and dict(labels)["kind"] == "prompt"
        }
        assert tokens == prompt
    assert len(counted) == 1
    assert counted.pop() >= HEALTH_CHECKS + 1  # ours, and serve's own wait until it answered


def test_serve_shares_a_directory_only_between_several_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # setenv first: monkeypatch then restores the variable's absence after the test (delenv of a variable that is
    # not set records nothing, and the one share_metrics sets would leak into every later subprocess).
    monkeypatch.setenv(METRICS_DIR_ENV, "")
    monkeypatch.delenv(METRICS_DIR_ENV)
    assert share_metrics(1) is None
    made = share_metrics(2)
    assert made is not None
    try:
        assert os.environ[METRICS_DIR_ENV] == made
        assert Path(made).is_dir()
        assert share_metrics(3) is None  # named already (by the operator, or here): used as it is
    finally:
        shutil.rmtree(made)

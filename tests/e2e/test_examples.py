"""The cookbook examples in clients/examples/, run as a user runs them, against one live server with a trainer.

Each uploads clients/examples/train.jsonl, fine-tunes the tiny model, follows the job to its end and chats with
the fine-tuned model: the Python one with the `openai` package, the Node one with the npm `openai` package pinned
in clients/examples/node (installed from the registry by `npm ci` when missing).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from fixtures.node import install_node_packages, sdk_env
from fixtures.server import TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "clients" / "examples"
MODEL_LINE = re.compile(rf"^Fine-tuned model: (ft:{TINY}:default:support-bot:\w+) \((\d+) trained tokens\)$", re.M)


@pytest.fixture(scope="module")
def server(tiny_training_server):
    return tiny_training_server


def run_example(command: list[str], server, cwd: Path) -> str:
    """Run an example with the SDK's own variables pointing at the server; return its output (it must exit 0)."""
    env = sdk_env(
        OPENAI_BASE_URL=server.base_url,
        OPENAI_API_KEY=server.key,
        EXAMPLE_MODEL=TINY,
        EXAMPLE_POLL_S="0.2",
    )
    done = subprocess.run(
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, (
        f"{command} failed:\n{done.stdout}\n{done.stderr}\nserver log:\n{server.log.read_text()}"
    )
    return done.stdout


def check_the_flow(output: str, server) -> None:
    """The example uploaded, trained, followed to success and got a reply from the model it made."""
    lines = output.splitlines()
    assert lines[0].startswith("Uploaded train.jsonl as file-")
    assert re.match(rf"^Created ftjob-\w+ on {TINY}: validating_files$", lines[1])
    assert "  The job has successfully completed" in lines
    found = MODEL_LINE.search(output)
    assert found is not None, output
    model = found.group(1)
    assert int(found.group(2)) > 0
    asked = "\nUser: Where is my order?\nAssistant: "
    assert asked in output  # then the reply, streamed: the tiny model's is noise, newlines included
    assert output.endswith("\n")

    client = openai.OpenAI(base_url=server.base_url, api_key=server.key, max_retries=0)
    assert model in {m.id for m in client.models.list().data}
    job = next(j for j in client.fine_tuning.jobs.list(limit=100).data if j.fine_tuned_model == model)
    assert job.status == "succeeded"
    assert job.trained_tokens == int(found.group(2))


def test_the_python_cookbook_example(server):
    check_the_flow(run_example([sys.executable, "cookbook.py"], server, EXAMPLES), server)


def test_the_node_cookbook_example(server):
    node = install_node_packages(EXAMPLES / "node")
    check_the_flow(run_example([node, "cookbook.mjs"], server, EXAMPLES / "node"), server)

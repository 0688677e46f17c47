"""End to end with the official openai Node SDK (npm `openai`, pinned in tests/e2e/node) against `tunewright serve`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fixtures.node import install_node_packages, sdk_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="session")
def node_sdk() -> str:
    """The `node` executable, with tests/e2e/node/node_modules installed from the lock (`npm ci`) if stale."""
    return install_node_packages(NODE_DIR)


def test_node_sdk_runs_the_control_plane_flow_with_two_tenants(node_sdk, live_server):
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["openai"]
    # The SDK must not pick up a proxy, an OpenAI key or an org from the machine it runs on.
    env = sdk_env(
        TUNEWRIGHT_E2E_BASE_URL=live_server.base_url,
        TUNEWRIGHT_E2E_KEY_A=live_server.key,
        TUNEWRIGHT_E2E_KEY_B=live_server.new_key("globex", "research"),
    )

    done = subprocess.run(
        [node_sdk, "flow.mjs"],
        cwd=NODE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, (
        f"flow.mjs failed:\n{done.stdout}\n{done.stderr}\nserver log:\n{live_server.log.read_text()}"
    )
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True
    assert summary["sdk"] == pinned
    assert summary["file"].startswith("file-")
    assert summary["job"].startswith("ftjob-")
    assert "line 14" in summary["bad_file_error"]
    assert summary["models"] >= 1

"""End to end with the official openai Node SDK (npm `openai`, pinned in tests/e2e/node) against `tunewright serve`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODE_DIR = Path(__file__).resolve().parent / "node"


def _tool(name: str) -> str:
    """The path of `name` on PATH; missing fails under CI and skips elsewhere, with the reason."""
    path = shutil.which(name)
    if path is None:
        reason = f"`{name}` is not on PATH: the Node SDK end-to-end test needs node and npm"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _installed_matches_lock() -> bool:
    """Whether node_modules holds exactly the versions that package-lock.json pins."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    for location, entry in lock["packages"].items():
        if not location or entry.get("optional") or entry.get("peer") or entry.get("link"):
            continue
        manifest = NODE_DIR / location / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text()).get("version") != entry.get("version"):
            return False
    return True


@pytest.fixture(scope="session")
def node_sdk() -> str:
    """The `node` executable, with tests/e2e/node/node_modules installed from the lock (`npm ci`) if stale."""
    node = _tool("node")
    npm = _tool("npm")
    if not _installed_matches_lock():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
        assert _installed_matches_lock(), "npm ci did not install what package-lock.json pins"
    return node


def test_node_sdk_runs_the_control_plane_flow_with_two_tenants(node_sdk, live_server):
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["openai"]
    env = {
        **os.environ,
        "TUNEWRIGHT_E2E_BASE_URL": live_server.base_url,
        "TUNEWRIGHT_E2E_KEY_A": live_server.key,
        "TUNEWRIGHT_E2E_KEY_B": live_server.new_key("globex", "research"),
        # The SDK must not pick up a proxy, an OpenAI key or an org from the machine it runs on.
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        env.pop(name, None)

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

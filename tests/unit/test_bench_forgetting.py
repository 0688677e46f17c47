"""bench/forgetting.py runs end to end on a small job: both arms succeed and the check's share is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = pytest.mark.slow


def test_the_benchmark_times_both_arms_and_the_check_inside_the_job(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    argv = [sys.executable, str(BENCH / "forgetting.py"), "--model", "tiny", "--rounds", "2"]
    argv += ["--examples", "16", "--epochs", "2", "--probe-examples", "8", "--json", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=240, cwd=BENCH.parent, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())["tiny"]
    assert len(figures["off_s"]) == len(figures["on_s"]) == len(figures["check_s"]) == 2
    assert all(0 < check < on for check, on in zip(figures["check_s"], figures["on_s"], strict=True))
    assert "(4 steps, 8 probe conversations, 2 checkpoints + the base)" in figures["summary"]
    assert "round 2 off job" in done.stdout

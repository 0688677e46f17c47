"""API latency while the embedded worker trains: `tunewright serve` with one training worker subprocess.

Starts `tunewright serve` on a fresh data dir (SQLite + local files, `TUNEWRIGHT_TRAINERS=1`), then measures
sequential `GET /v1/fine_tuning/jobs?limit=20` latencies twice in the same run: with the worker idle, and while it
trains a job on SmolLM2-135M (or the tiny model with `--model tiny`). Prints p50/p95/max of each and the ratio.
The worker runs at a lower CPU priority with `TUNEWRIGHT_TORCH_THREADS` threads (default 1), which is what keeps
the API responsive on a small machine.

    .venv/bin/python bench/responsive.py                 # SmolLM2 (imported into the temp data dir first)
    .venv/bin/python bench/responsive.py --model tiny
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from server import free_port, load_average

VENV_BIN = Path(sys.executable).parent
ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets"


def request(url: str, key: str, method: str = "GET", body: Any = None) -> Any:
    """One JSON request; return the decoded body."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())


def upload(url: str, key: str, data: bytes) -> str:
    """Upload a training file with a hand-built multipart body; return its id."""
    boundary = "tunewright-bench"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="train.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    req = urllib.request.Request(f"{url}/v1/files", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=60) as response:
        return json.loads(response.read())["id"]


def latencies(url: str, key: str, count: int) -> list[float]:
    """Milliseconds of `count` sequential list requests."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        request(f"{url}/v1/fine_tuning/jobs?limit=20", key)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def summary(samples: list[float]) -> str:
    """p50 / p95 / max of a latency sample."""
    ordered = sorted(samples)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return f"p50 {statistics.median(ordered):6.1f} ms  p95 {p95:6.1f} ms  max {ordered[-1]:6.1f} ms"


def start_server(data_dir: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, str, Path]:
    """Start `tunewright serve`; return the process, its URL, the first key and the log path."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWRIGHT_")}
    env.update({"TUNEWRIGHT_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TUNEWRIGHT_LOG_LEVEL": "WARNING"})
    env.update(env_extra)
    log = data_dir.parent / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(VENV_BIN / "tunewright"), "serve", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text()
        if "First start:" in text and "listening" in text and healthy(url):
            lines = text.splitlines()
            key = lines[lines.index(next(line for line in lines if line.startswith("First start:"))) + 1].strip()
            return process, url, key, log
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"serve did not start:\n{log.read_text()}")


def serve_model(tmp: Path, model: str, torch_threads: int) -> tuple[subprocess.Popen[bytes], str, str, str]:
    """`tunewright serve` with one training worker under `tmp` for `smollm2` or `tiny` (built there).

    Returns the process, its URL, the first key and the base model's name.
    """
    env = {"TUNEWRIGHT_TRAINERS": "1", "TUNEWRIGHT_TORCH_THREADS": str(torch_threads)}
    name = "smollm2-135m-instruct"
    if model == "tiny":
        subprocess.run([str(VENV_BIN / "tunewright"), "models", "make-tiny", str(tmp / "tiny")], check=True)
        env["TUNEWRIGHT_BASE_MODELS"] = f"tiny={tmp / 'tiny'}"
        name = "tiny"
    process, url, key, _ = start_server(tmp / "data", env)
    return process, url, key, name


def healthy(url: str) -> bool:
    """Whether the server answers /healthz."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_running(url: str, key: str, job_id: str) -> None:
    """Block until the job is running and has logged its first step."""
    while True:
        job = request(f"{url}/v1/fine_tuning/jobs/{job_id}", key)
        if job["status"] in ("failed", "cancelled", "succeeded"):
            raise RuntimeError(f"job ended before the measurement: {job}")
        events = request(f"{url}/v1/fine_tuning/jobs/{job_id}/events?limit=1", key)["data"]
        if job["status"] == "running" and events and events[0]["type"] == "metrics":
            return
        time.sleep(0.5)


def main() -> None:
    """Run the measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunewright-responsive-") as tmp:
        process, url, key, model = serve_model(Path(tmp), args.model, args.torch_threads)
        try:
            print(f"load average before: {load_average()}; worker torch threads {args.torch_threads}")
            idle = latencies(url, key, args.requests)
            lines = (ASSETS / "valid_chat.jsonl").read_bytes().splitlines(keepends=True)
            file_id = upload(url, key, b"".join(line for line in lines if b"tool_calls" not in line) * 4)
            hyper = {"n_epochs": 25, "batch_size": 4}
            job = request(
                f"{url}/v1/fine_tuning/jobs",
                key,
                "POST",
                {
                    "model": model,
                    "training_file": file_id,
                    "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
                },
            )
            wait_running(url, key, job["id"])
            busy = latencies(url, key, args.requests)
            request(f"{url}/v1/fine_tuning/jobs/{job['id']}/cancel", key, "POST", {})
        finally:
            process.terminate()
            process.wait(timeout=180)
        print(f"idle     {summary(idle)}")
        print(f"training {summary(busy)}")
        print(
            f"{args.model}: p50 while training {statistics.median(busy) / statistics.median(idle):.2f}x idle; "
            f"load average after: {load_average()}"
        )


if __name__ == "__main__":
    main()

"""Time from a job's success to its model's first streamed token, through a live `tunewright serve`.

Starts `tunewright serve` on a fresh data dir (SQLite + local files, one training worker, the local engine),
streams one chat completion from the base model (so the base is loaded, as on a server that already serves it),
then trains a one-epoch job and polls it every `--poll` seconds. The moment a poll sees `succeeded`, it streams a
chat completion from the new `ft:` model and times the first content token: the adapter is fetched from the blob
store, loaded into the base model's LoRA stacks and decoded, with no restart. In the same run it times a second
request to the same model (adapter warm) as the baseline, and prints the ratio. The goal is at most 10 s.

    .venv/bin/python bench/first_token.py                 # SmolLM2 (imported into the temp data dir first)
    .venv/bin/python bench/first_token.py --model tiny
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path

from responsive import ASSETS, request, serve_model, upload
from server import load_average

HELLO = [{"role": "user", "content": "Say hello."}]


def first_token_s(url: str, key: str, model: str) -> tuple[float, float]:
    """Stream one chat completion; return the seconds to its first content token, and when that was."""
    body = {"model": model, "messages": HELLO, "max_tokens": 16, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(), headers, method="POST")
    started = time.perf_counter()
    first = None
    with urllib.request.urlopen(req, timeout=300) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            for choice in chunk.get("choices", []):
                content = choice.get("delta", {}).get("content")
                if content and first is None:
                    first = time.perf_counter() - started
    if first is None:
        raise RuntimeError(f"{model} streamed no content")
    return first, started + first


def wait_succeeded(url: str, key: str, job_id: str, poll_s: float) -> tuple[float, str]:
    """Poll the job until it succeeds; return the monotonic time the poll saw it, and its model."""
    while True:
        job = request(f"{url}/v1/fine_tuning/jobs/{job_id}", key)
        if job["status"] == "succeeded":
            return time.perf_counter(), job["fine_tuned_model"]
        if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job ended as {job['status']}: {job.get('error')}")
        time.sleep(poll_s)


def main() -> None:
    """Run the measurement and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between job polls (default 0.2)")
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunewright-first-token-") as tmp:
        process, url, key, model = serve_model(Path(tmp), args.model, args.torch_threads)
        try:
            print(f"load average before: {load_average()}")
            base_cold, _ = first_token_s(url, key, model)
            base_warm, _ = first_token_s(url, key, model)
            lines = (ASSETS / "valid_chat.jsonl").read_bytes().splitlines(keepends=True)
            file_id = upload(url, key, b"".join(line for line in lines if b"tool_calls" not in line))
            hyper = {"n_epochs": 1, "batch_size": 4}
            method = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
            body = {"model": model, "training_file": file_id, "method": method}
            job = request(f"{url}/v1/fine_tuning/jobs", key, "POST", body)
            seen, tuned = wait_succeeded(url, key, job["id"], args.poll)
            cold, at = first_token_s(url, key, tuned)
            from_success = at - seen
            warm, _ = first_token_s(url, key, tuned)
        finally:
            process.terminate()
            process.wait(timeout=180)
    print(f"base model first token: {base_cold:.2f} s cold (loads the base), {base_warm:.3f} s warm")
    print(f"job success -> first token of {tuned}: {from_success:.2f} s (poll every {args.poll} s; goal <= 10 s)")
    print(f"same model, adapter warm: {warm:.3f} s; cold/warm {cold / warm:.1f}x")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()

"""Another tenant's chat latency while one tenant's large completion request runs, on `tunewright serve`.

Tenant A posts one `/v1/completions` request with `--prompts` prompts (`--n` choices each, `--max-tokens`
tokens); `--lead-s` seconds later tenant B (another project) asks a short chat completion and times it. The
baseline is B's latency on the idle server, in the same run, so the figure is a ratio. The servers' peak thread
count and resident memory growth (API process tree, sampled from /proc) and A's own duration are printed too.

With `--before REV`, the same measurement runs first on that revision of this repository (exported with
`git archive` into a temp dir and put first on `PYTHONPATH`, so its `tunewright` package is the one the server
imports), then on this checkout: the before/after ratios are of one run. Both servers use the same fresh data
dir, one after the other (SQLite, no trainer, batch 8).

    .venv/bin/python bench/tenants.py --model tiny --before 3af3fac          # ~1 min
    .venv/bin/python bench/tenants.py --model smollm2 --before 3af3fac --prompts 400
    .venv/bin/python bench/tenants.py --model tiny --prompts 1 --n 128 --max-tokens 500 --before 3af3fac
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from server import Process, ProcessTree, RssSampler, free_port, load_average

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = "smollm2-135m-instruct"
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu")


def post(url: str, key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One JSON POST; return the decoded answer."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=1800) as response:
        return json.loads(response.read())


def timed(call: Any) -> float:
    """Seconds `call()` takes."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def make_key(env: dict[str, str], project: str) -> str:
    """A project key of organization `bench` (the `keys create` CLI of this checkout; its last line)."""
    out = subprocess.run(
        [str(VENV_BIN / "tunewright"), "keys", "create", "--org", "bench", "--project", project],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def export(revision: str, into: Path) -> Path:
    """The repository at `revision` as a `tunewright` package directory under `into`; return `into`."""
    package = into / "tunewright"
    package.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(package)], input=archive.stdout, check=True)
    return into


class Scenario:
    """The two tenants' requests and where the servers run."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], model: str, keys: dict[str, str]) -> None:
        """Remember the request shapes, the environment and the keys."""
        self.args = args
        self.env = env
        self.model = model
        self.keys = keys
        self.prompts = [" ".join(WORDS[(k + j) % len(WORDS)] for j in range(6 + k % 5)) for k in range(args.prompts)]

    def big(self, url: str) -> None:
        """Tenant A's large request."""
        body = {"model": self.model, "prompt": self.prompts, "n": self.args.n, "max_tokens": self.args.max_tokens}
        post(url, self.keys["a"], "/v1/completions", body)

    def chat(self, url: str) -> None:
        """Tenant B's short chat."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Say hello to the other tenant."}],
            "max_tokens": 16,
            "temperature": 0,
        }
        post(url, self.keys["b"], "/v1/chat/completions", body)

    def measure(self, name: str, python_path: str | None, log_dir: Path) -> dict[str, float]:
        """Start a server (of `python_path`'s package when given) and measure idle and busy; stop it."""
        env = dict(self.env)
        if python_path is not None:
            env["PYTHONPATH"] = python_path
        port = free_port()
        argv = [str(VENV_BIN / "tunewright"), "serve", "--port", str(port)]
        with Process(name, argv, port=port, probe_path="/healthz", log_dir=log_dir).start(env) as server:
            self.chat(server.url)  # loads the model (SmolLM2: imports it on the first run)
            idle = statistics.median(timed(lambda: self.chat(server.url)) for _ in range(self.args.idle))
            busy, big_s, threads, growth = [], [], [], []
            for _ in range(self.args.rounds):
                tree = ProcessTree(server.pid)
                with RssSampler(tree, interval_s=0.05) as sampler:
                    started = time.perf_counter()
                    worker = threading.Thread(target=self.big, args=(server.url,))
                    worker.start()
                    time.sleep(self.args.lead_s)
                    busy.append(timed(lambda: self.chat(server.url)))
                    worker.join()
                    big_s.append(time.perf_counter() - started)
                threads.append(sampler.peak_threads - sampler.baseline_threads)
                growth.append(sampler.growth_mib)
        figures = {
            "idle_s": idle,
            "busy_s": statistics.median(busy),
            "big_s": statistics.median(big_s),
            "threads": statistics.median(threads),
            "rss_mib": statistics.median(growth),
        }
        figures["ratio"] = figures["busy_s"] / figures["idle_s"]
        print(
            f"{name:7s} B idle {idle:6.2f} s   B while A runs {figures['busy_s']:7.2f} s "
            f"({figures['ratio']:6.1f}x idle)   A took {figures['big_s']:7.2f} s   "
            f"+{figures['threads']:.0f} threads   +{figures['rss_mib']:.0f} MiB",
            flush=True,
        )
        return figures


def setup(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, str], str]:
    """The servers' environment over a fresh data dir, and the base model's name (the tiny one built there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWRIGHT_") and k != "PYTHONPATH"}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TUNEWRIGHT_DATA_DIR": str(tmp / "data"),
            "TUNEWRIGHT_TRAINERS": "0",
            "TUNEWRIGHT_LOG_LEVEL": "WARNING",
            "TUNEWRIGHT_INFERENCE_MAX_BATCH": "8",
            "TUNEWRIGHT_TORCH_THREADS": str(args.torch_threads),
        }
    )
    if args.model == "smollm2":
        return env, SMOLLM2
    subprocess.run([str(VENV_BIN / "tunewright"), "models", "make-tiny", str(tmp / "tiny")], check=True, env=env)
    env["TUNEWRIGHT_BASE_MODELS"] = f"tiny={tmp / 'tiny'}"
    return env, "tiny"


def main() -> None:
    """Run the measurement(s) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--prompts", type=int, default=2000, help="tenant A's prompts (default 2000)")
    parser.add_argument("--n", type=int, default=1, help="tenant A's choices per prompt")
    parser.add_argument("--max-tokens", type=int, default=16, help="tenant A's tokens per choice")
    parser.add_argument("--lead-s", type=float, default=2.0, help="seconds A runs before B asks")
    parser.add_argument("--idle", type=int, default=3, help="idle chats (median)")
    parser.add_argument("--rounds", type=int, default=1, help="large requests per server (medians)")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--before", metavar="REV", help="also measure this revision first (e.g. 3af3fac)")
    args = parser.parse_args()
    print(f"load average before: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="tunewright-tenants-") as name:
        tmp = Path(name)
        env, model = setup(args, tmp)
        keys = {project: make_key(env, project) for project in ("a", "b")}
        scenario = Scenario(args, env, model, keys)
        print(f"{model}: A asks {args.prompts} prompts x n={args.n} x {args.max_tokens} tokens; B a 16-token chat")
        results = {}
        if args.before:
            results["before"] = scenario.measure("before", str(export(args.before, tmp / "before")), tmp)
        results["after"] = scenario.measure("after", None, tmp)
    if "before" in results:
        before, after = results["before"], results["after"]
        print(
            f"after vs before: B's latency while A runs {after['busy_s'] / before['busy_s']:.3f}x "
            f"({before['ratio']:.1f}x idle -> {after['ratio']:.1f}x idle), A's own duration "
            f"{after['big_s'] / before['big_s']:.2f}x, extra threads {before['threads']:.0f} -> {after['threads']:.0f}"
        )
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()

"""Grading cost per sample: each metric in-process, and a python grader's sandbox against a bare interpreter start.

    .venv/bin/python bench/graders.py [--rounds 5] [--calls 200] [--runs 20]

Prints, per round, the median time of one call of each text-similarity metric and of a string check (on a
120-word answer against a 100-word reference), and the median wall time of one python grader run
(`run_python`: fence, limits, temporary directory, `unshare -n` where it works) next to a bare
`python -I -c pass` subprocess, the least any process-per-sample sandbox costs; then the medians over the rounds
and the load average.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

from tunewright.graders import Runtime, Sample, SandboxLimits, grade, parse_grader
from tunewright.graders.metrics import METRICS, similarity
from tunewright.graders.sandbox import isolation_prefix, run_python

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
]
BARE = [sys.executable, "-I", "-c", "pass"]
SOURCE = "def grade(sample, item):\n    return 1.0 if item['label'] in sample['output_text'] else 0.0\n"


def timed(function, calls: int) -> float:
    """Median seconds of one call over `calls` calls."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(0)
    answer = " ".join(rng.choice(WORDS) for _ in range(120))
    reference = " ".join(rng.choice(WORDS) for _ in range(100))
    check = parse_grader(
        {
            "type": "string_check",
            "name": "c",
            "input": "{{sample.output_text}}",
            "reference": "{{item.label}}",
            "operation": "ilike",
        }
    )
    sample = Sample.from_text(answer)
    metrics = [metric for metric in METRICS if metric != "cosine"]
    for metric in metrics:
        similarity(metric, answer, reference)  # first calls import the libraries
    print(f"isolation: {' '.join(isolation_prefix()) or 'none'}")
    results: dict[str, list[float]] = {}
    for round_number in range(1, args.rounds + 1):
        row = {"string_check": timed(lambda: grade(check, sample, {"label": "alpha"}, Runtime()), args.calls)}
        for metric in metrics:
            row[metric] = timed(lambda metric=metric: similarity(metric, answer, reference), args.calls)
        row["python grader"] = timed(
            lambda: run_python(SOURCE, sample.namespace(), {"label": "alpha"}, SandboxLimits()), args.runs
        )
        row["bare interpreter"] = timed(lambda: subprocess.run(BARE, check=True), args.runs)
        for name, seconds in row.items():
            results.setdefault(name, []).append(seconds)
        print(f"round {round_number}: " + ", ".join(f"{name} {seconds * 1000:.2f} ms" for name, seconds in row.items()))
    print("medians:")
    for name, seconds in results.items():
        print(f"  {name:18} {statistics.median(seconds) * 1000:9.3f} ms")
    sandbox, bare_start = statistics.median(results["python grader"]), statistics.median(results["bare interpreter"])
    print(f"python grader / bare interpreter start: {sandbox / bare_start:.2f}x; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()

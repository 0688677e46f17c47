"""What the forgetting check costs a job: the same job trained with and without it, on the tiny model and SmolLM2.

Each arm is a whole job run by the real worker (`Worker.run_once`: validation and tokenization, model loading,
training, checkpoints at each epoch end, the results file and the fine-tuned model) on SQLite and a local blob
directory in a temp dir. The two arms differ only in `forgetting_check` (`false` for "off"; the default, on, for
"on"), on docs/architecture.md's pinned mixed-length set (200 rows), batch 8, 3 epochs (what "auto" gives 200
examples), the default LoRA, the default `TUNEWRIGHT_FORGETTING_PROBE_EXAMPLES`. Rounds alternate which arm goes
first. Besides each job's wall time, the "on" arm times the check itself (rendering the probe, the base figure,
the figure at each checkpoint) from inside the job, which the machine's other load disturbs less than the
difference of two jobs' wall times.

    .venv/bin/python bench/forgetting.py                          # tiny (3 rounds), then SmolLM2 (1 round)
    .venv/bin/python bench/forgetting.py --model tiny --rounds 5
    .venv/bin/python bench/forgetting.py --model smollm2 --examples 100 --epochs 2   # a shorter job, larger share
    .venv/bin/python bench/forgetting.py --model smollm2 --arms on --probe-examples 128  # the check's share only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data import make_tenant
from server import load_average
from train import DEFAULT_CACHE, SMOLLM2, pinned_rows, quiet

from tunewright.storage.ids import new_id, new_model_slot
from tunewright.storage.keys import file_blob_key
from tunewright.storage.records import FileRecord, JobEventRecord, JobRecord, JobStatus
from tunewright.storage.registry import open_stores
from tunewright.storage.settings import Settings

BATCH_SIZE = 8
ARMS = ("off", "on")
DEFAULT_ROUNDS = {"tiny": 3, "smollm2": 1}


@dataclass(slots=True)
class Timer:
    """Seconds spent in the forgetting check's functions while a job runs (the worker calls them by these names)."""

    parts: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """All of it."""
        return sum(self.parts.values())

    def reset(self) -> None:
        """Forget the last job's."""
        self.parts.clear()

    def wrap(self, name: str, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - started

        return timed

    def describe(self) -> str:
        """`render 0.05 s, base 0.04 s, checkpoints 0.11 s`."""
        names = {"build_probe": "render", "base_probe_loss": "base", "probe_loss": "checkpoints"}
        return ", ".join(f"{label} {self.parts.get(name, 0.0):.2f} s" for name, label in names.items())


def install_timer(timer: Timer) -> None:
    """Time `build_probe`, `base_probe_loss` and `probe_loss` where the session calls them."""
    from tunewright.trainer import session

    for name in ("build_probe", "base_probe_loss", "probe_loss"):
        original = getattr(session, f"_bench_{name}", None) or getattr(session, name)
        setattr(session, f"_bench_{name}", original)
        setattr(session, name, timer.wrap(name, original))


def model_dir(name: str, args: argparse.Namespace, workdir: Path) -> Path:
    """The tiny model built into `workdir`, or SmolLM2 imported once into the cache directory (as train.py)."""
    if name == "tiny":
        from tunewright.modeling.tiny import make_tiny

        return make_tiny(workdir / "tiny")
    from tunewright.modeling.registry import import_packaged_models_in_background, resolve_model_dir

    settings = Settings(data_dir=str(Path(args.cache_dir).expanduser()))
    importer = import_packaged_models_in_background(settings)
    if importer is not None:
        importer.join()
    directory = resolve_model_dir(SMOLLM2, settings)
    for weights in directory.glob("*.safetensors"):
        weights.read_bytes()  # into the page cache: the first arm's load would otherwise pay the disk
    return directory


class Bench:
    """A data dir with a tenant and the pinned training file; `job(...)` trains one job and times it."""

    def __init__(self, workdir: Path, base_model: str, model_path: Path, rows: int, args: argparse.Namespace) -> None:
        """Migrate stores under `workdir` and upload the training file as the API would."""
        self.settings = Settings(
            data_dir=str(workdir / "data"),
            base_models={base_model: str(model_path)},
            torch_threads=args.threads,
            **({"forgetting_probe_examples": args.probe_examples} if args.probe_examples else {}),
        )
        self.stores = open_stores(self.settings)
        self.stores.metadata.migrate()
        self.tenant = make_tenant(self.stores, f"bench{new_id('request')[-6:].lower()}")
        self.base_model = base_model
        data = b"".join(json.dumps(row).encode() + b"\n" for row in pinned_rows(rows))
        file_id = new_id("file")
        self.file = FileRecord(
            id=file_id,
            project_id=self.tenant.project_id,
            bytes=len(data),
            created_at=int(time.time()),
            filename="pinned.jsonl",
            purpose="fine-tune",
            blob_key=file_blob_key(self.tenant.project_id, file_id),
            sha256="0" * 64,
            line_count=rows,
        )
        self.stores.blobs.put(self.file.blob_key, iter([data]))
        self.stores.metadata.insert_file(self.file)

    def job(self, *, check: bool, epochs: int) -> float:
        """Queue one job and run it with a fresh worker; return its wall time in seconds."""
        from tunewright.trainer.backends.peft import PeftTrainingBackend
        from tunewright.trainer.worker import Worker

        now = int(time.time())
        hyper: dict[str, Any] = {"batch_size": BATCH_SIZE, "learning_rate_multiplier": "auto", "n_epochs": epochs}
        if not check:
            hyper["forgetting_check"] = False
        job = JobRecord(
            id=new_id("job"),
            project_id=self.tenant.project_id,
            organization_id=self.tenant.organization_id,
            created_at=now,
            updated_at=now,
            model=self.base_model,
            base_model=self.base_model,
            status=JobStatus.VALIDATING_FILES,
            training_file=self.file.id,
            validation_file=None,
            hyperparameters=dict(hyper),
            method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
            seed=0,
            model_slot=new_model_slot(),
        )
        event = JobEventRecord(
            id=new_id("event"), job_id=job.id, project_id=job.project_id, created_at=now, level="info", message="bench"
        )
        self.stores.metadata.insert_job(job, event)
        worker = Worker(self.settings, self.stores, PeftTrainingBackend(), device="cpu")
        started = time.monotonic()
        outcome = worker.run_once()
        seconds = time.monotonic() - started
        if outcome != "succeeded":
            raise SystemExit(f"the {'on' if check else 'off'} job ended {outcome}")
        return seconds

    def probe_figures(self) -> tuple[int, int]:
        """(steps, probe conversations) of the last job that ran the check, from its events."""
        jobs = self.stores.metadata.list_jobs(project_id=self.tenant.project_id, after=None, limit=1, metadata=None)
        job_id = jobs.items[0].id
        events = self.stores.metadata.list_events(
            job_id, project_id=self.tenant.project_id, after=None, limit=10_000, order="asc"
        ).items
        steps = max((e.data or {}).get("step", 0) for e in events if e.type == "metrics")
        used = next(
            (int(e.message.split("(")[1].split()[0]) for e in events if e.message.startswith("Forgetting check: the")),
            0,
        )
        return steps, used


def bench_model(name: str, args: argparse.Namespace, workdir: Path, timer: Timer) -> dict[str, Any]:
    """Run both arms of one model for its rounds; print each run and the summary."""
    base_model = "tiny" if name == "tiny" else SMOLLM2
    path = model_dir(name, args, workdir)
    bench = Bench(workdir / name, base_model, path, args.examples, args)
    rounds = args.rounds or DEFAULT_ROUNDS[name]
    print(f"\n== {name}: {args.examples} rows, batch {BATCH_SIZE}, {args.epochs} epochs, {rounds} round(s)", flush=True)
    arms = tuple(arm for arm in ARMS if arm in args.arms.split(","))
    runs: dict[str, list[float]] = {arm: [] for arm in arms}
    checks: list[float] = []
    steps = used = 0
    for round_no in range(1, rounds + 1):
        order = arms if round_no % 2 else tuple(reversed(arms))
        for arm in order:
            timer.reset()
            seconds = bench.job(check=arm == "on", epochs=args.epochs)
            runs[arm].append(seconds)
            extra = ""
            if arm == "on":
                checks.append(timer.seconds)
                steps, used = bench.probe_figures()
                extra = (
                    f"  check {timer.seconds:6.2f} s ({timer.seconds / (seconds - timer.seconds):.2%} of the rest: "
                    f"{timer.describe()})"
                )
            print(f"round {round_no} {arm:3} job {seconds:8.2f} s{extra}", flush=True)
    on, check = statistics.median(runs["on"]), statistics.median(checks)
    share = check / (on - check)
    wall = ""
    if runs.get("off"):
        off = statistics.median(runs["off"])
        wall = f"job {off:.1f} s without the check, {on:.1f} s with it ({on / off - 1:+.1%} wall); "
    summary = (
        f"{name}: {wall}the check itself {check:.2f} s = {share:.2%} of the rest of its job ({steps} steps, "
        f"{used} probe conversations, {args.epochs} checkpoints + the base)"
    )
    print(summary)
    arm_seconds = {f"{arm}_s": seconds for arm, seconds in runs.items()}
    return {**arm_seconds, "check_s": checks, "share": share, "summary": summary}


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2", "all"], default="all")
    parser.add_argument("--examples", type=int, default=200, help="rows of the pinned set (default: 200)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs, hence checkpoints (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as a worker)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default: 3 for tiny, 1 for SmolLM2)")
    parser.add_argument("--probe-examples", type=int, default=0, help="the probe conversations scored (0: default)")
    parser.add_argument("--arms", default="off,on", help="`on` alone measures the check's share inside the job")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="data dir the SmolLM2 import is kept in")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if "on" not in args.arms.split(","):
        parser.error("--arms must include on")
    return args


def main() -> int:
    """Run the benchmark and print the figures."""
    args = parse_args()
    quiet()
    import torch

    torch.set_num_threads(args.threads)
    timer = Timer()
    install_timer(timer)
    names = ["tiny", "smollm2"] if args.model == "all" else [args.model]
    load_before = load_average()
    print(f"torch {torch.__version__}, {args.threads} thread(s) of {os.cpu_count()} CPUs, fp32, PEFT backend")
    print(f"load average before: {load_before}", flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tunewright-bench-forgetting-") as tmp:
        warm = Bench(Path(tmp) / "warm", "tiny", model_dir("tiny", args, Path(tmp)), 16, args)
        warm.job(check=True, epochs=1)  # lazy imports and first calls, off the clock
        for name in names:
            results[name] = bench_model(name, args, Path(tmp), timer)
    load_after = load_average()
    print(f"\nload average before: {load_before}   after: {load_after}")
    for name in names:
        print(results[name]["summary"])
    if args.json:
        args.json.write_text(json.dumps({"load": [load_before, load_after], **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

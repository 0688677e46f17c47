"""Export times on the CPU: a fine-tuned SmolLM2-135M written as its adapter, merged, and as GGUF (F16 and Q8_0).

Each export is timed as a training worker runs it: `Worker.run_once` on an export queued in SQLite with a local
blob store, so the clock covers the claim, fetching the adapter, loading the base model in float32, merging,
writing the format, streaming it into the blob store and publishing the file (not the wait for a worker). The
adapter is PEFT's LoRA, r=16, alpha=32, on every linear layer, with random weights (they do not change the work).
The baseline, in the same run: loading the base model and saving it with `save_pretrained` (model and tokenizer),
the least any merged export does. Rounds interleave the arms; the table gives medians and each arm's ratio to the
baseline, with the load average.

    .venv/bin/python bench/export.py                        # SmolLM2-135M, 3 rounds, 1 torch thread (~4 min)
    .venv/bin/python bench/export.py --model tiny --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from server import load_average

SMOLLM2 = "smollm2-135m-instruct"
DEFAULT_CACHE = Path("~/.cache/tunewright-bench")  # outside the checkout: the SmolLM2 import happens once
ARMS: dict[str, dict[str, Any]] = {
    "adapter": {"format": "adapter"},
    "merged f32": {"format": "merged", "dtype": "f32"},
    "merged bf16": {"format": "merged", "dtype": "bf16"},
    "gguf f16": {"format": "gguf", "quantization": "f16"},
    "gguf q8_0": {"format": "gguf", "quantization": "q8_0"},
}
BASELINE = "load + save_pretrained"


def model_dir_for(name: str, cache_dir: Path, workdir: Path) -> Path:
    """The tiny model built into `workdir`, or SmolLM2 imported once into the cache directory."""
    if name == "tiny":
        from tunewright.modeling.tiny import make_tiny

        return make_tiny(workdir / "tiny")
    from tunewright.modeling.registry import resolve_model_dir
    from tunewright.storage.settings import Settings

    return resolve_model_dir(SMOLLM2, Settings(data_dir=str(cache_dir.expanduser())))


class Bench:
    """A data dir with one succeeded job of a project whose model has a random adapter in the blob store."""

    def __init__(self, base: str, model_dir: Path, workdir: Path) -> None:
        from tunewright.storage.registry import open_stores
        from tunewright.storage.settings import Settings
        from tunewright.trainer.backends.peft import PeftTrainingBackend
        from tunewright.trainer.worker import Worker

        self.model_dir = model_dir
        self.workdir = workdir
        self.settings = Settings(data_dir=str(workdir / "data"), base_models={base: str(model_dir)})
        self.stores = open_stores(self.settings)
        self.stores.metadata.migrate()
        self.job, self.model = self._job(base)
        self.worker = Worker(self.settings, self.stores, PeftTrainingBackend(), device="cpu")

    def _job(self, base: str) -> tuple[Any, str]:
        from tunewright.storage.events import make_event
        from tunewright.storage.ids import new_id, new_model_slot
        from tunewright.storage.keys import adapter_blob_prefix
        from tunewright.storage.records import JobRecord, ModelRecord

        metadata = self.stores.metadata
        organization = metadata.create_organization(name="Bench", slug="bench")
        project = metadata.create_project(organization_id=organization.id, name="bench")
        slot = new_model_slot()
        name = f"ft:{base}:bench::{slot}"
        now = int(time.time())
        job = JobRecord(
            id=new_id("job"),
            project_id=project.id,
            organization_id=organization.id,
            created_at=now,
            model=base,
            base_model=base,
            status="succeeded",
            training_file="file-bench",
            validation_file=None,
            hyperparameters={},
            method={"type": "supervised"},
            seed=0,
            model_slot=slot,
            fine_tuned_model=name,
        )
        metadata.insert_job(job, make_event(job.id, project.id, "Created"))
        prefix = adapter_blob_prefix(project.id, job.id, "final")
        for path in random_adapter(self.model_dir, self.workdir / "adapter").iterdir():
            self.stores.blobs.put(f"{prefix}/{path.name}", path.open("rb"))
        metadata.insert_model(
            ModelRecord(
                id=name,
                project_id=project.id,
                organization_id=organization.id,
                created=now,
                owned_by="bench",
                base_model=base,
                job_id=job.id,
                adapter_key=prefix,
            )
        )
        return job, name

    def export(self, options: dict[str, Any]) -> tuple[float, int]:
        """One export through the worker: its seconds and the file's bytes (the file is deleted after)."""
        from tunewright.storage.ids import new_id
        from tunewright.storage.records import ExportRecord

        now = int(time.time())
        record = ExportRecord(
            id=new_id("export"),
            project_id=self.job.project_id,
            job_id=self.job.id,
            created_at=now,
            updated_at=now,
            checkpoint=self.model,
            status="queued",
            **options,
        )
        self.stores.metadata.insert_export(record)
        started = time.perf_counter()
        outcome = self.worker.run_once()
        seconds = time.perf_counter() - started
        done = self.stores.metadata.get_export(record.id, job_id=self.job.id, project_id=self.job.project_id)
        if outcome != "succeeded" or done.file_id is None:
            raise SystemExit(f"export {options} ended {outcome}: {done.error}")
        file = self.stores.metadata.delete_file(done.file_id, project_id=self.job.project_id)
        self.stores.blobs.delete(file.blob_key)
        return seconds, file.bytes

    def load_and_save(self) -> tuple[float, int]:
        """The baseline: load the base model (float32) and its tokenizer, save both; seconds and bytes written."""
        from tunewright.modeling.loading import load_model, load_tokenizer

        out = self.workdir / "baseline"
        started = time.perf_counter()
        load_model(self.model_dir).save_pretrained(out)
        load_tokenizer(self.model_dir).save_pretrained(out)
        seconds = time.perf_counter() - started
        size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
        for path in out.iterdir():
            path.unlink()
        out.rmdir()
        return seconds, size


def random_adapter(model_dir: Path, out: Path) -> Path:
    """A LoRA adapter (r=16, alpha=32, every linear layer) with random, non-zero weights, saved as PEFT saves it."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunewright.modeling.loading import load_model

    torch.manual_seed(0)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(load_model(model_dir), config).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker's default: 1)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="data dir the SmolLM2 import is kept in")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    base = SMOLLM2 if args.model == "smollm2" else "tiny"
    with tempfile.TemporaryDirectory(prefix="tunewright-bench-export-") as tmp:
        workdir = Path(tmp)
        bench = Bench(base, model_dir_for(args.model, Path(args.cache_dir), workdir), workdir)
        bench.export(ARMS["adapter"])  # first-call costs (imports, the first model load) paid once, untimed
        times: dict[str, list[float]] = {name: [] for name in (BASELINE, *ARMS)}
        sizes: dict[str, int] = {}
        print(f"{base}, {args.threads} torch thread(s), {args.rounds} rounds; load average {load_average()}")
        for round_ in range(1, args.rounds + 1):
            for name in (BASELINE, *ARMS):
                seconds, size = bench.load_and_save() if name == BASELINE else bench.export(ARMS[name])
                times[name].append(seconds)
                sizes[name] = size
                print(f"round {round_}: {name:<24} {seconds:7.2f} s  {size / 2**20:8.1f} MiB", flush=True)
        bench.stores.close()
    floor = statistics.median(times[BASELINE])
    print(f"\nmedians (load average {load_average()}):")
    print(f"| {'arm':<24} | {'seconds':>8} | {'MiB':>8} | {'x baseline':>10} |")
    print(f"| {'-' * 24} | {'-' * 8}:| {'-' * 8}:| {'-' * 10}:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name:<24} | {median:8.2f} | {sizes[name] / 2**20:8.1f} | {median / floor:10.2f} |")


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput on the CPU: our loop against the HF `Trainer` a CPU user would otherwise run.

Three arms train the same model with the same LoRA adapter (PEFT, r=16, alpha=32, every linear layer), the same
token ids and target masks (docs/architecture.md's pinned mixed-length set through our `tokenize_dataset`),
fp32, batch 8, AdamW at the same learning rate with 10% warmup and cosine decay, gradients clipped at 1.0:

- **hf-random**: `transformers.Trainer` with a padding collator (ids padded with the pad id, labels with -100);
- **hf-group_by_length**: the same with `train_sampling_strategy="group_by_length"`;
- **ours**: `tunewright.trainer.loop.train` on batches from `plan_batches` collated by `collate_examples`.

Each arm first trains one untimed step on 8 examples (lazy imports and first-call costs, paid once per process),
then loads a fresh model for the timed run: its clock starts when its first batch is collated and stops at the end
of its last optimizer step (model loading is outside). Tokens/s counts
the non-padding tokens (attention mask) of the batches trained; padding is pad tokens over batch tokens.

    .venv/bin/python bench/train.py                          # tiny and SmolLM2-135M, 25 steps per arm
    .venv/bin/python bench/train.py --model tiny --examples 16 --max-steps 2

With a CUDA device and `unsloth` importable, a GPU part compares the Unsloth and PEFT backends on our loop (each in
its own process: importing Unsloth patches transformers and PEFT for the whole process).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server import load_average

from tunewright.modeling.dataset import tokenize_dataset
from tunewright.modeling.hyperparams import ResolvedHyperparameters
from tunewright.trainer.batching import plan_batches
from tunewright.trainer.collate import collate_examples, pad_id_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch

    from tunewright.modeling.dataset import TokenizedExample

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu")
WORDS += ("xi", "omicron", "pi", "rho", "sigma")  # the pinned set's vocabulary, in its order
BATCH_SIZE = 8
SEED = 0
SMOLLM2 = "smollm2-135m-instruct"
DEFAULT_CACHE = Path("~/.cache/tunewright-bench")  # outside the checkout: the SmolLM2 import happens once
ARMS = ("hf-random", "hf-group_by_length", "ours")


def pinned_rows(n: int = 200) -> list[dict[str, Any]]:
    """The pinned mixed-length set: row i is user "Q{i}: <3-40 words>", assistant <2-120 words>."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 120)))
        messages = [{"role": "user", "content": f"Q{i}: {question}"}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def hf_features(examples: list[TokenizedExample]) -> list[dict[str, list[int]]]:
    """The same examples for the HF `Trainer`: labels are the ids where the target mask is 1, else -100."""
    return [
        {"input_ids": list(e.ids), "labels": [t if m else -100 for t, m in zip(e.ids, e.mask, strict=True)]}
        for e in examples
    ]


@dataclass(slots=True)
class Recorder:
    """What one arm trained: per-batch token counts, per-step end times and losses."""

    started: float = 0.0
    rows: list[tuple[int, int]] = field(default_factory=list)  # (non-pad tokens, batch tokens) per batch
    step_ends: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def batch(self, attention: torch.Tensor) -> None:
        """Count one collated batch; the clock starts at the first."""
        if not self.rows:
            self.started = time.monotonic()
        self.rows.append((int(attention.sum()), attention.numel()))

    def step_end(self) -> None:
        """Note the end of an optimizer step."""
        self.step_ends.append(time.monotonic())


@dataclass(frozen=True, slots=True)
class ArmResult:
    """One arm's figures."""

    arm: str
    steps: int
    wall_s: float
    tokens: int
    batch_tokens: int
    mean_loss: float
    last_loss: float  # mean of the last 5 steps' losses
    params: int = 0  # the model's parameters, base and adapter

    @property
    def tokens_per_s(self) -> float:
        """Non-pad tokens trained per second."""
        return self.tokens / self.wall_s if self.wall_s else 0.0

    @property
    def padding(self) -> float:
        """Pad tokens over all batch tokens."""
        return 1 - self.tokens / self.batch_tokens if self.batch_tokens else 0.0


def finish(arm: str, recorder: Recorder, model: Any) -> ArmResult:
    """Turn a recorder into figures, counting only the batches that were trained (loaders may read ahead)."""
    steps = len(recorder.step_ends)
    trained = recorder.rows[:steps]
    return ArmResult(
        arm=arm,
        steps=steps,
        wall_s=recorder.step_ends[-1] - recorder.started if steps else 0.0,
        tokens=sum(t for t, _ in trained),
        batch_tokens=sum(b for _, b in trained),
        mean_loss=statistics.fmean(recorder.losses) if recorder.losses else math.nan,
        last_loss=statistics.fmean(recorder.losses[-5:]) if recorder.losses else math.nan,
        params=sum(p.numel() for p in model.parameters()),
    )


def pad_batch(features: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad HF features: ids with `pad_id`, labels with -100, attention 0 on padding."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), -100, dtype=torch.long)
    attention = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        ids[row, :n] = torch.tensor(f["input_ids"])
        labels[row, :n] = torch.tensor(f["labels"])
        attention[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


@dataclass(frozen=True, slots=True)
class Setup:
    """What every arm of one model shares."""

    model_dir: Path
    examples: list[TokenizedExample]
    pad_id: int
    hyper: ResolvedHyperparameters
    steps: int
    epochs: int
    device: str = "cpu"


def load(setup: Setup, backend: Any = None) -> Any:
    """A fresh model with a fresh LoRA adapter (same seed, so the same initial weights in every arm)."""
    from tunewright.trainer.backends.peft import PeftTrainingBackend

    model, _ = (backend or PeftTrainingBackend()).load(setup.model_dir, setup.hyper, seed=SEED, device=setup.device)
    return model


def run_hf(setup: Setup, strategy: str, workdir: Path) -> ArmResult:
    """Train with `transformers.Trainer` and sampling `strategy` ("random" or "group_by_length")."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    recorder = Recorder()

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            recorder.step_end()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                recorder.losses.append(float(logs["loss"]))

    def collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        batch = pad_batch(features, setup.pad_id)
        recorder.batch(batch["attention_mask"])
        return batch

    training_args = TrainingArguments(
        output_dir=str(workdir / f"hf-{strategy}"),
        per_device_train_batch_size=BATCH_SIZE,
        max_steps=setup.steps,
        learning_rate=setup.hyper.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=warmup_steps(setup.steps),
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",  # what our loop uses (torch.optim.AdamW, not the fused variant)
        train_sampling_strategy=strategy,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_level="error",
        use_cpu=setup.device == "cpu",
        seed=SEED,
        data_seed=SEED,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
    )
    model = load(setup)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=hf_features(setup.examples),  # type: ignore[arg-type]  # a list is a map-style dataset
        data_collator=collate,
        callbacks=[Clock()],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every step's log dict
    trainer.train()
    return finish(f"hf-{strategy}", recorder, model)


def warmup_steps(steps: int) -> int:
    """Warmup steps as `make_training_state` counts them: 10%, at least one."""
    return max(1, math.ceil(0.1 * steps))


def run_ours(setup: Setup, backend: Any = None) -> ArmResult:
    """Train with our loop on length-grouped batches from `plan_batches`."""
    from tunewright.trainer.loop import train

    recorder = Recorder()
    lengths = [e.length for e in setup.examples]

    def batches() -> Iterator[Any]:
        for epoch in range(setup.epochs):
            for indices in plan_batches(lengths, batch_size=BATCH_SIZE, seed=SEED, epoch=epoch):
                batch = collate_examples([setup.examples[i] for i in indices], setup.pad_id)
                recorder.batch(batch.attention_mask)  # type: ignore[arg-type]  # collate always sets it
                yield batch

    def on_step(metrics: Any) -> bool:
        recorder.step_end()
        recorder.losses.append(metrics.train_loss)
        return True

    model = load(setup, backend)
    train(model, batches(), hyper=setup.hyper, total_steps=setup.steps, seed=SEED, on_step=on_step)
    return finish("ours", recorder, model)


def run_arm(arm: str, setup: Setup, workdir: Path) -> ArmResult:
    """Run one of `ARMS`."""
    return run_ours(setup) if arm == "ours" else run_hf(setup, arm.removeprefix("hf-"), workdir)


def model_dir_for(name: str, args: argparse.Namespace, workdir: Path) -> Path:
    """The tiny model built into `workdir`, or SmolLM2 imported once into the cache directory."""
    if name == "tiny":
        from tunewright.modeling.tiny import make_tiny

        return make_tiny(workdir / "tiny")
    from tunewright.modeling.registry import resolve_model_dir
    from tunewright.storage.settings import Settings

    return resolve_model_dir(SMOLLM2, Settings(data_dir=str(Path(args.cache_dir).expanduser())))


def make_setup(model_dir: Path, args: argparse.Namespace, device: str = "cpu") -> Setup:
    """Tokenize the pinned set with the model's chat template and fix the run's length."""
    from transformers import AutoConfig

    from tunewright.modeling.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    max_tokens = int(AutoConfig.from_pretrained(model_dir, local_files_only=True).max_position_embeddings)
    lines = [json.dumps(row) for row in pinned_rows(args.examples)]
    data = tokenize_dataset(lines, tokenizer, param="training_file", method="supervised", max_tokens=max_tokens)
    per_epoch = math.ceil(len(data.examples) / BATCH_SIZE)
    steps = min(per_epoch * args.epochs, args.max_steps) if args.max_steps else per_epoch * args.epochs
    hyper = ResolvedHyperparameters(
        method_type="supervised",
        n_epochs=args.epochs,
        batch_size=BATCH_SIZE,
        learning_rate_multiplier=1.0,
        learning_rate=args.learning_rate,
        lora_dropout=args.lora_dropout,
    )
    return Setup(model_dir, data.examples, pad_id_of(tokenizer), hyper, steps, args.epochs, device)


def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run every arm of one model for `--rounds` rounds; print each run, the table and the summary line."""
    started = time.monotonic()
    setup = make_setup(model_dir_for(name, args, workdir), args)
    print(
        f"\n== {name}: {len(setup.examples)} examples, {setup.steps} steps per arm, ready in "
        f"{time.monotonic() - started:.1f} s",
        flush=True,
    )
    # Each arm's first run in a process pays one-off costs (lazy imports, first calls): pay them off the clock.
    short = Setup(setup.model_dir, setup.examples[:BATCH_SIZE], setup.pad_id, setup.hyper, 1, 1)
    for arm in ARMS:
        run_arm(arm, short, workdir)
    runs: dict[str, list[ArmResult]] = {arm: [] for arm in ARMS}
    for round_no in range(1, args.rounds + 1):
        for arm in ARMS:
            result = run_arm(arm, setup, workdir)
            runs[arm].append(result)
            print(
                f"round {round_no} {arm:20} {result.tokens_per_s:9.1f} tok/s  {result.wall_s:7.1f} s  "
                f"padding {result.padding:6.1%}  loss {result.mean_loss:.4f}",
                flush=True,
            )
    return report(name, runs)


def report(name: str, runs: dict[str, list[ArmResult]]) -> dict[str, Any]:
    """Print the table of medians and the one-line summary; return them for `--json`."""
    speed = {arm: statistics.median(r.tokens_per_s for r in results) for arm, results in runs.items()}
    best = max(("hf-random", "hf-group_by_length"), key=speed.__getitem__)
    print(
        f"\n| {'arm':<20} | {'steps':>5} | {'wall s':>7} | {'non-pad tok/s':>13} | {'padding':>7} | "
        f"{'mean loss':>9} | {'last-5 loss':>11} | {'vs best baseline':>16} |"
    )
    print(f"| {'-' * 20} | {'-' * 5}:| {'-' * 7}:| {'-' * 13}:| {'-' * 7}:| {'-' * 9}:| {'-' * 11}:| {'-' * 16}:|")
    rows = {}
    for arm, results in runs.items():
        r = results[len(results) // 2] if len(results) % 2 else results[0]
        wall = statistics.median(x.wall_s for x in results)
        print(
            f"| {arm:<20} | {r.steps:5d} | {wall:7.1f} | {speed[arm]:13.1f} | {r.padding:7.1%} | "
            f"{r.mean_loss:9.4f} | {r.last_loss:11.4f} | {speed[arm] / speed[best]:15.2f}x |"
        )
        rows[arm] = {**asdict(r), "wall_s": wall, "tokens_per_s": speed[arm], "padding": r.padding}
    ratio = speed["ours"] / speed[best]
    ours_pad, best_pad = runs["ours"][0].padding, runs[best][0].padding
    summary = (
        f"{name}: ours {ratio:.2f}x best baseline ({best.removeprefix('hf-')}), "
        f"padding {ours_pad:.1%} vs {best_pad:.1%}"
    )
    print(summary)
    return {"arms": rows, "best_baseline": best, "ratio": ratio, "summary": summary}


def gpu_part(names: list[str], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Unsloth vs PEFT backends on our loop, each in a child process; skipped without CUDA or Unsloth."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        print("\nGPU part skipped: no CUDA device")
        return {}
    if importlib.util.find_spec("unsloth") is None:
        print("\nGPU part skipped: unsloth is not installed")
        return {}
    out: dict[str, Any] = {}
    for name in names:
        model_dir = model_dir_for(name, args, workdir)
        print(f"\n== GPU, {name}: our loop, {torch.cuda.get_device_name()}, peak {args.peak_tflops} TFLOP/s")
        print(f"| {'backend':<8} | {'tok/s':>9} | {'peak GiB':>8} | {'MFU':>6} |")
        for backend in ("peft", "unsloth"):
            argv = [sys.executable, __file__, "--gpu-arm", backend, "--model-dir", str(model_dir)]
            argv += ["--examples", str(args.examples), "--epochs", str(args.epochs), "--max-steps", str(args.max_steps)]
            argv += ["--learning-rate", str(args.learning_rate), "--lora-dropout", str(args.lora_dropout)]
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"| {backend:<8} | failed: {last} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            mfu = 6 * r["params"] * r["tokens_per_s"] / (args.peak_tflops * 1e12)
            out[f"{name}/{backend}"] = {**r, "mfu": mfu}
            print(f"| {backend:<8} | {r['tokens_per_s']:9.0f} | {r['peak_bytes'] / 2**30:8.2f} | {mfu:6.2%} |")
    return out


def gpu_arm(backend_name: str, args: argparse.Namespace) -> int:
    """Child process of `gpu_part`: train one backend on CUDA and print one JSON line."""
    if backend_name == "unsloth":
        from tunewright.trainer.backends.unsloth import UnslothTrainingBackend, import_unsloth

        import_unsloth()  # before transformers and PEFT, as the worker does
        backend: Any = UnslothTrainingBackend()
    else:
        from tunewright.trainer.backends.peft import PeftTrainingBackend

        backend = PeftTrainingBackend()
    quiet()
    import gc

    import torch

    setup = make_setup(Path(args.model_dir), args, device="cuda")
    short = Setup(setup.model_dir, setup.examples[:BATCH_SIZE], setup.pad_id, setup.hyper, 1, 1, setup.device)
    run_ours(short, backend)  # kernel selection and compilation off the clock
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = run_ours(setup, backend)
    print(
        json.dumps(
            {
                "tokens_per_s": result.tokens_per_s,
                "peak_bytes": torch.cuda.max_memory_allocated(),
                "params": result.params,
                "loss": result.mean_loss,
            }
        )
    )
    return 0


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2", "all"], default="all")
    parser.add_argument("--examples", type=int, default=200, help="rows of the pinned set (default: 200)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs (default: 1)")
    parser.add_argument("--max-steps", type=int, default=25, help="optimizer steps per arm at most; 0: no cap")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians reported (default: 1)")
    parser.add_argument("--learning-rate", type=float, default=2e-4, help="every arm's peak learning rate")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="every arm's LoRA dropout")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="data dir the SmolLM2 import is kept in")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU peak for MFU (H100 bf16 dense)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--gpu-arm", choices=["peft", "unsloth"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    return parser.parse_args()


def quiet() -> None:
    """Silence transformers' and PEFT's logs and warnings: the table is the output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def main() -> int:
    """Run the benchmark and print the tables."""
    args = parse_args()
    if args.gpu_arm:
        return gpu_arm(args.gpu_arm, args)
    quiet()
    import torch

    torch.set_num_threads(args.threads)
    names = ["tiny", "smollm2"] if args.model == "all" else [args.model]
    load_before = load_average()
    print(
        f"torch {torch.__version__}, {args.threads} threads of {os.cpu_count()} CPUs, fp32, batch {BATCH_SIZE}, "
        f"LoRA r=16 alpha=32 dropout {args.lora_dropout} all-linear, lr {args.learning_rate}"
    )
    print(f"load average before: {load_before}", flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tunewright-bench-train-") as tmp:
        for name in names:
            results[name] = bench_model(name, args, Path(tmp))
        load_after = load_average()
        print(f"\nload average before: {load_before}   after: {load_after}")
        for name in names:
            print(results[name]["summary"])
        results["gpu"] = gpu_part(names, args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps({"load": [load_before, load_after], **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

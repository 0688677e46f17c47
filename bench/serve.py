"""Serving throughput with many LoRA adapters on one base: `LocalEngine` (per-row gathered LoRA) against PEFT.

Every arm runs greedy requests of 32 new tokens (stop tokens banned, so every row makes all 32) on the CPU, fp32,
batches of 8 (`inference_max_batch`); tokens/s counts generated tokens over the wall time from submitting the
requests together to the last event:

- **base**: 8 requests on the base model alone through `LocalEngine.submit`;
- **1-adapter**: the same 8 requests all on one adapter;
- **8-adapters**: the same 8 requests, each on its own adapter;
- **64-adapters**: 64 requests over 64 adapters (all loaded beforehand: `adapter_cache_count` 64), 8 at a time;
- **hf-base** / **peft-8-mixed**: the external baseline, PEFT 0.21 `model.generate` on the same 8 left-padded
  prompts, without adapters and with `adapter_names=[8 distinct adapters]` (PEFT's mixed batch).

Adapters are random non-zero LoRA (r=16, alpha=32, every linear layer but the head), written in PEFT's file layout
to a local blob store in a temp dir. Also measured: cold adapter load (blob → first token of a request on a
never-loaded adapter, engine otherwise idle) and batching (8 distinct-adapter requests together vs one at a time).
Arms are interleaved over `--rounds` rounds after one warm-up round; medians are reported with the load average.

    .venv/bin/python bench/serve.py --model smollm2             # the figures in bench/README.md
    .venv/bin/python bench/serve.py --model tiny --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server import load_average

from tunewright.inference.engine import generate

if TYPE_CHECKING:
    from tunewright.inference.engine import AdapterRef, GenerationRequest
    from tunewright.inference.local import LocalEngine

SMOLLM2 = "smollm2-135m-instruct"
DEFAULT_CACHE = Path("~/.cache/tunewright-bench")  # outside the checkout: the SmolLM2 import happens once
BASE = "bench-base"
NEW_TOKENS = 32
BATCH = 8
RANK, ALPHA = 16, 32
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu")
ARMS = ("base", "1-adapter", "8-adapters", "64-adapters", "hf-base", "peft-8-mixed")


def write_adapter(model: Any, out: Path, *, seed: int) -> Path:
    """Write a random non-zero r=16 all-linear LoRA adapter of `model` in PEFT's layout to `out`."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors, targets = {}, set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            prefix = f"base_model.model.{name}"
            a = torch.randn(RANK, module.in_features, generator=generator) / module.in_features**0.5
            tensors[f"{prefix}.lora_A.weight"] = a
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(module.out_features, RANK, generator=generator) * 0.01
            targets.add(name.rsplit(".", 1)[-1])
    out.mkdir(parents=True)
    save_file(tensors, out / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": sorted(targets), "bias": "none"}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def make_engine(model_dir: Path, workdir: Path, args: argparse.Namespace) -> tuple[LocalEngine, Any]:
    """A LocalEngine over `model_dir` as `bench-base`, with a local blob store in `workdir`."""
    from tunewright.inference.local import LocalEngine
    from tunewright.storage.registry import open_blob_store
    from tunewright.storage.settings import load_settings

    settings = load_settings(
        {},
        data_dir=str(workdir / "data"),
        base_models={BASE: str(model_dir)},
        torch_threads=args.threads,
        inference_max_batch=BATCH,
        adapter_cache_count=80,
        adapter_cache_bytes=1 << 40,
    )
    blobs = open_blob_store(settings)
    return LocalEngine(settings, blobs, device="cpu"), blobs


def store(blobs: Any, directory: Path, name: str) -> AdapterRef:
    """Put an adapter's files under a blob prefix; return its reference."""
    from tunewright.inference.engine import AdapterRef

    prefix = f"bench/adapters/{name}"
    for filename in ("adapter_config.json", "adapter_model.safetensors"):
        with (directory / filename).open("rb") as fh:
            blobs.put(f"{prefix}/{filename}", fh)
    return AdapterRef(name=f"ft:{BASE}:bench::{name}", blob_prefix=prefix)


def prompts(tokenizer: Any, count: int) -> list[list[int]]:
    """`count` chat prompts of 12-20 words each (chat template, generation prompt)."""
    rows = []
    for k in range(count):
        text = " ".join(WORDS[(k * 7 + j) % len(WORDS)] for j in range(12 + k % 9))
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Q{k}: {text}"}], tokenize=False, add_generation_prompt=True
        )
        rows.append(list(tokenizer(rendered, add_special_tokens=False)["input_ids"]))
    return rows


def requests(
    engine: LocalEngine, ids: list[list[int]], adapters: list[AdapterRef | None], tokens: int = NEW_TOKENS
) -> list[GenerationRequest]:
    """Greedy requests of exactly `tokens` new tokens (stop tokens banned), request k on `adapters[k % len]`."""
    from tunewright.inference.engine import GenerationRequest, ModelTarget, SamplingParams

    stops = engine._model(BASE).stop_ids
    params = SamplingParams(max_new_tokens=tokens, temperature=0.0, logit_bias=dict.fromkeys(stops, -100.0))
    return [
        GenerationRequest(
            target=ModelTarget(base_model=BASE, adapter=adapters[k % len(adapters)]), prompt_ids=p, params=params
        )
        for k, p in enumerate(ids)
    ]


def together(engine: LocalEngine, reqs: list[GenerationRequest]) -> float:
    """Submit all requests at once; return generated tokens/s."""

    def one(req: GenerationRequest) -> int:
        return sum(len(event.token_ids) for event in generate(engine, req, cancelled=threading.Event()))

    start = time.perf_counter()
    with ThreadPoolExecutor(len(reqs)) as pool:
        tokens = sum(pool.map(one, reqs))
    return tokens / (time.perf_counter() - start)


def one_by_one(engine: LocalEngine, reqs: list[GenerationRequest]) -> float:
    """Run the requests one at a time; return generated tokens/s."""
    start = time.perf_counter()
    tokens = sum(sum(len(e.token_ids) for e in generate(engine, r, cancelled=threading.Event())) for r in reqs)
    return tokens / (time.perf_counter() - start)


def cold_load(engine: LocalEngine, ref: AdapterRef, ids: list[int]) -> float:
    """Seconds from a request on a never-loaded adapter to its first token."""
    req = requests(engine, [ids], [ref], tokens=1)[0]
    start = time.perf_counter()
    next(iter(generate(engine, req, cancelled=threading.Event())))
    return time.perf_counter() - start


def load_peft(model_dir: Path, adapter_dirs: list[Path]) -> Any:
    """The base model in PEFT with the 8 adapters loaded as `a0`…`a7` (the external baseline)."""
    from peft import PeftModel

    from tunewright.modeling.loading import load_model

    model = PeftModel.from_pretrained(load_model(model_dir), adapter_dirs[0], adapter_name="a0")
    for k, directory in enumerate(adapter_dirs[1:], start=1):
        model.load_adapter(directory, adapter_name=f"a{k}")
    return model.eval()


def peft_generate(model: Any, ids: list[list[int]], pad_id: int, adapter_names: list[str] | None) -> float:
    """PEFT `generate` on the left-padded prompts (mixed adapters, or none); return generated tokens/s."""
    import torch

    from tunewright.inference.batch import left_padded

    input_ids, mask = left_padded(ids, pad_id, "cpu")
    extra = {"adapter_names": adapter_names} if adapter_names else {}
    start = time.perf_counter()
    with torch.inference_mode():
        if adapter_names:
            out = model.generate(input_ids=input_ids, attention_mask=mask, **_greedy(pad_id), **extra)
        else:
            with model.disable_adapter():
                out = model.generate(input_ids=input_ids, attention_mask=mask, **_greedy(pad_id))
    elapsed = time.perf_counter() - start
    return (out.shape[1] - input_ids.shape[1]) * len(ids) / elapsed


def _greedy(pad_id: int) -> dict[str, Any]:
    return {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": pad_id}


class Bench:
    """One model's engine, adapters and PEFT baseline, measured round by round."""

    def __init__(self, model_dir: Path, workdir: Path, args: argparse.Namespace) -> None:
        """Write 64 (+ cold-load) adapters, start the engine and PEFT, and load the 64 adapters once."""
        from tunewright.modeling.loading import load_model

        self.engine, blobs = make_engine(model_dir, workdir, args)
        template = load_model(model_dir)
        count = 64 + args.rounds + 1
        dirs = [write_adapter(template, workdir / "adapters" / f"a{k}", seed=k) for k in range(count)]
        del template
        self.refs = [store(blobs, directory, f"a{k}") for k, directory in enumerate(dirs)]
        self.cold = self.refs[64:]
        tokenizer = self.engine.tokenizer(BASE)
        self.ids = prompts(tokenizer, 64)
        self.pad_id = self.engine._model(BASE).pad_id
        self.peft = load_peft(model_dir, dirs[:BATCH])
        together(self.engine, requests(self.engine, self.ids, self.refs[:64], tokens=1))  # all 64 loaded

    def round(self, results: dict[str, list[float]]) -> None:
        """Measure every arm once, interleaved."""
        e, eight = self.engine, self.ids[:BATCH]
        results["base"].append(together(e, requests(e, eight, [None])))
        results["1-adapter"].append(together(e, requests(e, eight, self.refs[:1])))
        results["8-adapters"].append(together(e, requests(e, eight, self.refs[:BATCH])))
        results["64-adapters"].append(together(e, requests(e, self.ids, self.refs[:64])))
        results["hf-base"].append(peft_generate(self.peft, eight, self.pad_id, None))
        names = [f"a{k}" for k in range(BATCH)]
        results["peft-8-mixed"].append(peft_generate(self.peft, eight, self.pad_id, names))
        results["one-by-one"].append(one_by_one(e, requests(e, eight, self.refs[:BATCH])))
        results["cold-load-s"].append(cold_load(e, self.cold.pop(), self.ids[0]))


def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> str:
    """Measure one model; print its rounds and table; return its summary line."""
    model_dir = model_dir_for(name, args, workdir)
    bench = Bench(model_dir, workdir / name, args)
    warmup: dict[str, list[float]] = {arm: [] for arm in (*ARMS, "one-by-one", "cold-load-s")}
    bench.round(warmup)
    results: dict[str, list[float]] = {arm: [] for arm in warmup}
    for k in range(args.rounds):
        bench.round(results)
        print(f"{name} round {k + 1}: " + "  ".join(f"{arm} {v[-1]:.3g}" for arm, v in results.items()), flush=True)
    bench.engine.close()
    med = {arm: statistics.median(values) for arm, values in results.items()}
    print(f"\n{name}: median of {args.rounds} rounds, generated tokens/s (batch {BATCH}, {NEW_TOKENS} new tokens)")
    print(f"{'arm':<14} {'tokens/s':>9} {'ratio':>7}")
    for arm in ARMS:
        reference = med["hf-base"] if arm.startswith(("hf", "peft")) else med["base"]
        print(f"{arm:<14} {med[arm]:>9.1f} {med[arm] / reference:>6.2f}x")
    batching = med["8-adapters"] / med["one-by-one"]
    print(f"one-by-one     {med['one-by-one']:>9.1f}   8 together / one by one: {batching:.2f}x")
    print(f"cold adapter load (blob -> first token): {med['cold-load-s']:.2f} s")
    return (
        f"{name}: 8 adapters {med['8-adapters'] / med['base']:.2f}x base, 64 adapters "
        f"{med['64-adapters'] / med['base']:.2f}x (PEFT mixed batch {med['peft-8-mixed'] / med['hf-base']:.2f}x)"
    )


def model_dir_for(name: str, args: argparse.Namespace, workdir: Path) -> Path:
    """The tiny model built into `workdir`, or SmolLM2 imported once into the cache directory."""
    if name == "tiny":
        from tunewright.modeling.tiny import make_tiny

        return make_tiny(workdir / "tiny")
    from tunewright.modeling.registry import resolve_model_dir
    from tunewright.storage.settings import Settings

    return resolve_model_dir(SMOLLM2, Settings(data_dir=str(Path(args.cache_dir).expanduser())))


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2", "all"], default="smollm2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: comparable under load)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds after a warm-up (default: 3)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="data dir the SmolLM2 import is kept in")
    return parser.parse_args()


def main() -> int:
    """Run the benchmark and print the tables."""
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    names = ["tiny", "smollm2"] if args.model == "all" else [args.model]
    load_before = load_average()
    print(f"torch {torch.__version__}, {args.threads} thread(s) of {os.cpu_count()} CPUs, fp32, LoRA r={RANK}")
    print(f"load average before: {load_before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tunewright-bench-serve-") as tmp:
        summaries = [bench_model(name, args, Path(tmp)) for name in names]
    print(f"\nload average before: {load_before}   after: {load_average()}")
    for line in summaries:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

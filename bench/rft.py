"""What one reinforcement fine-tuning (GRPO) step costs against one supervised step on the same model and prompts.

    .venv/bin/python bench/rft.py [--model smollm2|tiny] [--prompts 4] [--group 4] [--completion-tokens 32]
        [--rounds 3] [--threads 2]

Both steps train the same LoRA adapter shape on the same `--prompts` arithmetic prompts, through the shared loop
(`trainer.loop.train`, one optimizer step each): the supervised step on the prompts with their answers, the
reinforcement step sampling `--group` completions of at most `--completion-tokens` tokens per prompt, grading each
with a `string_check` grader, and training on them (`trainer.rft.RftObjective`). The two alternate over
`--rounds` rounds after one untimed step of each; each round prints both times, and the medians and their ratio
are printed at the end with the load average. A separate timing of the sampling alone says where the reinforcement
step's time goes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from export import DEFAULT_CACHE, model_dir_for
from server import load_average

GRADER = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


def lines(count: int, *, with_answer: bool) -> list[bytes]:
    out = []
    for i in range(count):
        a, b = 3 + i, 4 + 2 * i
        messages = [{"role": "user", "content": f"What is {a} + {b}? Answer with the number only."}]
        if with_answer:
            messages.append({"role": "assistant", "content": str(a + b)})
        out.append(json.dumps({"messages": messages, "answer": str(a + b)}).encode())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--completion-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="data dir the SmolLM2 import is kept in")
    args = parser.parse_args()

    import torch

    from tunewright.graders import Runtime, parse_grader
    from tunewright.modeling.dataset import tokenize_dataset
    from tunewright.modeling.hyperparams import ResolvedHyperparameters
    from tunewright.modeling.loading import load_tokenizer
    from tunewright.trainer.backends.peft import PeftTrainingBackend
    from tunewright.trainer.collate import collate_examples, pad_id_of
    from tunewright.trainer.loop import make_training_state, train
    from tunewright.trainer.rft import RftBatch, RftObjective, sample

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model_dir_for(args.model, Path(args.cache_dir), Path(tmp))
        tokenizer = load_tokenizer(model_dir)
        pad = pad_id_of(tokenizer)
        sft = tokenize_dataset(
            lines(args.prompts, with_answer=True), tokenizer, param="training_file", method="supervised", max_tokens=512
        )
        rft = tokenize_dataset(
            lines(args.prompts, with_answer=False),
            tokenizer,
            param="training_file",
            method="reinforcement",
            max_tokens=512,
        )
        hyper = ResolvedHyperparameters(
            method_type="reinforcement", n_epochs=1, batch_size=args.prompts, learning_rate_multiplier=0.1,
            learning_rate=2e-4,
        )  # fmt: skip
        model = PeftTrainingBackend().load(model_dir, hyper, seed=0, device="cpu")[0]
        objective = RftObjective(
            parse_grader(GRADER),
            Runtime(),
            tokenizer,
            group_size=args.group,
            pad_id=pad,
            max_completion_tokens=args.completion_tokens,
        )
        sft_batch = collate_examples(sft.examples, pad)
        sft_state = make_training_state(model, learning_rate=2e-4, total_steps=10_000)
        rft_state = make_training_state(model, learning_rate=2e-4, total_steps=10_000)
        sft_times, rft_times, sample_times, sampled = [], [], [], []
        print(
            f"model {args.model}, {args.prompts} prompts, group {args.group}, <= {args.completion_tokens} tokens",
            flush=True,
        )
        warm = RftBatch(examples=rft.examples, seed=-1)  # a first step of each, untimed: allocations, kernels
        train(model, [sft_batch], hyper=hyper, total_steps=1, seed=0, state=sft_state)
        train(model, [warm], hyper=hyper, total_steps=1, seed=0, state=rft_state, objective=objective)
        objective.take_tokens()
        for round_ in range(args.rounds):
            started = time.perf_counter()
            train(model, [sft_batch], hyper=hyper, total_steps=sft_state.step + 1, seed=0, state=sft_state)
            sft_times.append(time.perf_counter() - started)
            batch = RftBatch(examples=rft.examples, seed=round_)
            started = time.perf_counter()
            train(model, [batch], hyper=hyper, total_steps=rft_state.step + 1, seed=0, state=rft_state,
                  objective=objective)  # fmt: skip
            rft_times.append(time.perf_counter() - started)
            sampled.append(objective.take_tokens()[0])
            prompts = [e.prompt for e in rft.examples for _ in range(args.group)]
            started = time.perf_counter()
            sample(model, tokenizer, prompts, objective, seed=round_)
            sample_times.append(time.perf_counter() - started)
            objective.take_tokens()
            print(
                f"round {round_ + 1}: sft {sft_times[-1]:.2f}s  rft {rft_times[-1]:.2f}s "
                f"(sampling alone {sample_times[-1]:.2f}s, {sampled[-1]} tokens sampled)",
                flush=True,
            )
        sft_median, rft_median = statistics.median(sft_times), statistics.median(rft_times)
        sampling = statistics.median(sample_times)
        print(f"median: sft step {sft_median:.2f}s, rft step {rft_median:.2f}s, sampling {sampling:.2f}s")
        print(f"rft / sft step: {rft_median / sft_median:.1f}x   (load average {load_average()})")


if __name__ == "__main__":
    main()

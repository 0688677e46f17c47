"""bench/train.py's pure helpers: the pinned data set, HF labels, the padding collator and the figures."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tunewright.modeling.dataset import TokenizedExample

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench_train() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCH))  # the script imports its sibling `server` as bench scripts do
    try:
        spec = importlib.util.spec_from_file_location("bench_train", BENCH / "train.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_train", None)
        sys.path.remove(str(BENCH))


def test_pinned_rows_follow_design_md(bench_train: ModuleType) -> None:
    rows = bench_train.pinned_rows()
    assert len(rows) == 200
    assert rows == bench_train.pinned_rows()  # seeded: the same set every time
    for i, row in enumerate(rows):
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        prefix, question = user["content"].split(": ", 1)
        assert prefix == f"Q{i}"
        assert 3 <= len(question.split()) <= 40
        assert 2 <= len(assistant["content"].split()) <= 120
        assert set(question.split()) | set(assistant["content"].split()) <= set(bench_train.WORDS)
    assert bench_train.pinned_rows(5) == rows[:5]


def test_hf_labels_are_the_target_tokens_and_padding_is_ignored(bench_train: ModuleType) -> None:
    examples = [TokenizedExample([5, 6, 7, 8], [0, 0, 1, 1], 1), TokenizedExample([9, 10], [0, 1], 2)]
    features = bench_train.hf_features(examples)
    assert features[0] == {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}
    batch = bench_train.pad_batch(features, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_figures_count_only_trained_batches(bench_train: ModuleType) -> None:
    import torch

    recorder = bench_train.Recorder()
    recorder.batch(torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    recorder.batch(torch.tensor([[1, 1], [1, 1]]))  # read ahead by a loader, never trained
    recorder.step_end()
    recorder.losses.append(2.0)
    result = bench_train.finish("arm", recorder, torch.nn.Linear(2, 3))
    assert (result.steps, result.tokens, result.batch_tokens, result.params) == (1, 6, 8, 9)
    assert result.padding == pytest.approx(0.25)
    assert result.mean_loss == result.last_loss == 2.0

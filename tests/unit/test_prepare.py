"""The worker's streaming line splitter over blob chunks, and the wording of the validation summary event."""

from __future__ import annotations

from typing import Any

import pytest

from tunewright.storage.streams import blob_lines


class Chunks:
    """A stand-in for a `BlobStore` that yields fixed chunks (line framing only, no storage semantics)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def open(self, key: str) -> Any:
        return iter(self.chunks)


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b"a\nb", b"c\n", b"d"], [b"a\n", b"bc\n", b"d"]),
        ([b"x" * 5, b"y\n\n"], [b"xxxxxy\n", b"\n"]),
        ([b"a\n"], [b"a\n"]),
        ([b"a\r\nb\r\n"], [b"a\r\n", b"b\r\n"]),
        ([], []),
    ],
)
def test_lines_keep_their_ends_across_chunk_boundaries(chunks: list[bytes], lines: list[bytes]) -> None:
    assert list(blob_lines(Chunks(chunks), "key")) == lines  # type: ignore[arg-type]


def test_the_summary_event_counts_one_epoch_and_one_step_in_the_singular(tokenizer: Any) -> None:
    from pathlib import Path

    from tunewright.modeling.dataset import tokenize_dataset
    from tunewright.modeling.hyperparams import resolve_hyperparameters
    from tunewright.trainer.prepare import PreparedJob, summary_message

    lines = (Path(__file__).resolve().parent.parent / "assets" / "valid_chat.jsonl").read_bytes().splitlines()
    training = tokenize_dataset(lines, tokenizer, param="training_file", method="supervised", max_tokens=4096)
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 64}}}
    hyper = resolve_hyperparameters(method, examples=len(training.examples), base_learning_rate=1e-4)
    prepared = PreparedJob(
        model_dir=Path("."),
        tokenizer=tokenizer,
        training=training,
        validation=training,
        hyper=hyper,
        method=method,
        hyperparameters={},
        steps_per_epoch=1,
        total_steps=1,
        context_tokens=4096,
    )
    message = summary_message(prepared, seed=0)
    assert f"Training 1 epoch x {training.total_tokens} tokens = {training.total_tokens} billed" in message
    assert ", 1 step." in message
    assert "epochs" not in message

"""The worker's streaming line splitter over blob chunks."""

from __future__ import annotations

from typing import Any

import pytest

from tunewright.trainer.prepare import blob_lines


class Chunks:
    """A stand-in for `Stores` whose blob store yields fixed chunks (line framing only, no storage semantics)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.blobs = self
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

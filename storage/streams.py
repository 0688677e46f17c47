"""Stream helpers every BlobStore shares, so that no backend imports another.

`iter_chunks` (file object or iterable → chunks), `StreamDigest` (size + SHA-256 + byte limit), `ChunkReader`
(what `open` returns) and `concat_parts` (`concat` through the store's own `put`).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from tunewright.storage.base import BlobInfo
from tunewright.storage.keys import validate_key

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from types import TracebackType

    from tunewright.storage.base import BlobStore

CHUNK_SIZE = 1024 * 1024
"""How much `put` reads from a file object at a time."""


class Readable(Protocol):
    """What `ChunkReader` reads from: an open binary file or an S3 response body."""

    def read(self, size: int = ..., /) -> bytes:
        """Return up to `size` bytes; empty at the end."""
        ...

    def close(self) -> None:
        """Release the underlying file or connection."""
        ...


def iter_chunks(stream: BinaryIO | Iterable[bytes], chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the non-empty chunks of a binary file object (read `chunk_size` at a time) or of an iterable.

    A bare `bytes`/`bytearray`/`memoryview` counts as one chunk.

    Raises:
        TypeError: the iterable yields something that is not bytes-like.
    """
    if isinstance(stream, bytes | bytearray | memoryview):
        if stream:
            yield bytes(stream)
        return
    read = getattr(stream, "read", None)
    if read is not None:
        while chunk := read(chunk_size):
            yield chunk
        return
    for chunk in stream:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(f"blob stream yielded {type(chunk).__name__}, expected bytes")
        if chunk:
            yield chunk


class StreamDigest:
    """Running size and SHA-256 of a stream being stored, enforcing an optional byte limit."""

    def __init__(self, max_bytes: int | None) -> None:
        self._hash = hashlib.sha256()
        self._size = 0
        self._max_bytes = max_bytes

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Account for `chunk`.

        Raises:
            ValueError: the stream is now longer than `max_bytes`.
        """
        self._size += len(chunk)
        if self._max_bytes is not None and self._size > self._max_bytes:
            raise ValueError(f"blob stream exceeds max_bytes={self._max_bytes}")
        self._hash.update(chunk)

    def info(self) -> BlobInfo:
        """Return the size and hex digest of everything seen."""
        return BlobInfo(size=self._size, sha256=self._hash.hexdigest())


class ChunkReader:
    """Iterator over a readable's chunks that closes it when exhausted, closed, or garbage-collected.

    `open` returns one after opening the object, so a missing object fails at the call, and an iterator
    that is dropped unread still releases its file or connection.
    """

    def __init__(self, source: Readable, chunk_size: int) -> None:
        self._source: Readable | None = source
        self._chunk_size = chunk_size
        if chunk_size < 1:
            self.close()
            raise ValueError("chunk_size must be positive")

    def __iter__(self) -> ChunkReader:
        return self

    def __next__(self) -> bytes:
        if self._source is None:
            raise StopIteration
        try:
            chunk = self._read(self._source, self._chunk_size)
        except BaseException:
            self.close()
            raise
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def _read(self, source: Readable, size: int) -> bytes:
        """Read one chunk; subclasses translate backend errors here."""
        return source.read(size)

    def close(self) -> None:
        """Release the source; further iteration ends at once."""
        source, self._source = self._source, None
        if source is not None:
            source.close()

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def concat_parts(store: Any, key: str, parts: Sequence[str]) -> BlobInfo:
    """`BlobStore.concat` for any store: stream the parts, in order, through the store's own `put`."""
    for part in parts:
        validate_key(part)

    def chained() -> Iterator[bytes]:
        for part in parts:
            with store.open(part) as chunks:
                yield from chunks

    return store.put(key, chained())


def blob_lines(blobs: BlobStore, key: str) -> Iterator[bytes]:
    """Yield a blob's physical lines (with their line ends), streaming; a long line is joined once, not rescanned."""
    partial: list[bytes] = []
    for chunk in blobs.open(key):
        start = 0
        end = chunk.find(b"\n")
        while end != -1:
            partial.append(chunk[start : end + 1])
            yield b"".join(partial)
            partial.clear()
            start = end + 1
            end = chunk.find(b"\n", start)
        if start < len(chunk):
            partial.append(chunk[start:])
    if partial:
        yield b"".join(partial)

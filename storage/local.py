"""LocalBlobStore: blobs as files under a root directory, written temp file → fsync → `os.replace`."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from tunewright.storage.disk import PRIVATE_FILE_MODE, is_disk_full, make_private_dir
from tunewright.storage.errors import InsufficientStorage, NotFound, Unavailable
from tunewright.storage.keys import TEMP_NAME, validate_key, validate_prefix
from tunewright.storage.streams import CHUNK_SIZE, ChunkReader, StreamDigest, concat_parts, iter_chunks

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from tunewright.storage.base import BlobInfo

logger = logging.getLogger(__name__)

_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class LocalBlobStore:
    """BlobStore on a local directory: key `a/b/c` is the file `<root>/a/b/c`.

    Writes go to `<dir>/.<name>.tmp-<16 hex>` next to the target, are fsynced, then renamed over it, so
    readers see the old file or the whole new one. A crash mid-write leaves only such temp files, which
    `sweep_temp` removes. Folders are created 0700 and files 0600: blobs are readable by the service's user only.

    Args:
        root: the directory holding the blobs; created if missing.
    """

    def __init__(self, root: str) -> None:
        self._root = Path(root).expanduser().resolve()
        make_private_dir(self._root)

    @property
    def root(self) -> Path:
        """The absolute path of the blob directory."""
        return self._root

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*validate_key(key).split("/"))

    def put(self, key: str, stream: BinaryIO | Iterable[bytes], *, max_bytes: int | None = None) -> BlobInfo:
        """Stream `stream` into a temp file, fsync it and rename it over `key` (see `BlobStore.put`).

        Raises:
            InvalidKey: the key is malformed.
            ValueError: the stream exceeds `max_bytes`; nothing is stored.
            InsufficientStorage: the file system (or the quota) is full; nothing is stored.
            OSError: the file system failed otherwise; nothing is stored.
        """
        path = self._path(key)
        temp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
        digest = StreamDigest(max_bytes)
        try:
            self._write(temp, path, stream, digest)
        except OSError as exc:
            if is_disk_full(exc):
                raise InsufficientStorage(f"no space left for blob {key!r} under {self._root}") from exc
            raise
        return digest.info()

    @staticmethod
    def _write(temp: Path, path: Path, stream: BinaryIO | Iterable[bytes], digest: StreamDigest) -> None:
        """Write `stream` to `temp`, fsync it and rename it to `path`; on any failure remove `temp` (no half file)."""
        fd = _create(temp)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in iter_chunks(stream):
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            temp.replace(path)
        except BaseException:
            _unlink_quietly(temp)
            raise
        _fsync_dir(path.parent)

    def open(self, key: str, *, chunk_size: int = CHUNK_SIZE) -> ChunkReader:
        """Open the file now and return an iterator over its chunks.

        Raises:
            NotFound: no object under `key` (raised here, before any chunk).
        """
        try:
            fh = self._path(key).open("rb")
        except _MISSING as exc:
            raise NotFound(f"blob {key!r}") from exc
        return ChunkReader(fh, chunk_size)

    def size(self, key: str) -> int:
        """Return the file's size. Raises `NotFound`."""
        try:
            info = self._path(key).stat()
        except _MISSING as exc:
            raise NotFound(f"blob {key!r}") from exc
        if stat.S_ISDIR(info.st_mode):
            raise NotFound(f"blob {key!r}")
        return info.st_size

    def delete(self, key: str) -> None:
        """Remove the file; a missing one is not an error."""
        path = self._path(key)
        with contextlib.suppress(*_MISSING):
            path.unlink()

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under the folder `prefix` (ending in `/`) and the folders it empties.

        Temp files of puts in flight are left to `sweep_temp`.

        Returns:
            The number of objects removed.
        """
        top = self._root.joinpath(*validate_prefix(prefix)[:-1].split("/"))
        removed = 0
        for directory, _dirs, files in os.walk(top, topdown=False, onerror=_raise_unless_missing):
            folder = Path(directory)
            for name in files:
                if TEMP_NAME.search(name):
                    continue
                try:
                    (folder / name).unlink()
                except FileNotFoundError:
                    continue  # deleted concurrently
                removed += 1
            _rmdir_if_empty(folder)
        return removed

    def concat(self, key: str, parts: Sequence[str]) -> BlobInfo:
        """Write the concatenation of `parts` under `key`, streaming, atomically (see `BlobStore.concat`).

        Raises:
            NotFound: a part is missing; nothing is stored.
        """
        return concat_parts(self, key, parts)

    def presign(self, key: str, ttl_s: int) -> str | None:
        """Return None: a local directory has no URLs."""
        validate_key(key)
        return None

    def ping(self) -> None:
        """Raise `Unavailable` unless the root is a writable directory."""
        if not self._root.is_dir():
            raise Unavailable(f"blob directory {self._root} does not exist")
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise Unavailable(f"blob directory {self._root} is not writable")

    def sweep_temp(self, older_than_s: float) -> int:
        """Remove temp files of crashed puts not modified for `older_than_s` seconds; return the count.

        A put in flight keeps writing to its temp file, so a generous age spares it.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for directory, _dirs, files in os.walk(self._root, onerror=_raise_unless_missing):
            for name in files:
                if not TEMP_NAME.search(name):
                    continue
                path = Path(directory, name)
                try:
                    if path.stat().st_mtime > cutoff:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue  # its put finished or failed meanwhile
                removed += 1
        if removed:
            logger.info("removed %d stale temp files under %s", removed, self._root)
        return removed

    def close(self) -> None:
        """Nothing to release."""


def _create(temp: Path) -> int:
    """Create `temp` (0600) exclusively, making its folder; retry once if a concurrent prefix delete removed it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for attempt in (1, 2):
        make_private_dir(temp.parent)
        try:
            return os.open(temp, flags, PRIVATE_FILE_MODE)
        except FileNotFoundError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _unlink_quietly(path: Path) -> None:
    """Remove a temp file on a failure path without hiding the error that got us there (it is logged)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        logger.warning("could not remove temp file %s", path, exc_info=True)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmdir_if_empty(directory: Path) -> None:
    """Remove `directory` if it is empty; one that is not (or is gone) is left as it is."""
    try:
        directory.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise


def _raise_unless_missing(exc: OSError) -> None:
    """`os.walk` error hook: a folder removed meanwhile is skipped, any other error raised."""
    if not isinstance(exc, FileNotFoundError):
        raise exc

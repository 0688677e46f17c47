"""The local disk under the data: private modes for what the service creates, free space against a watermark.

The data dir, the local blob store and the SQLite files hold every tenant's data, so what the service creates
there is readable by its own user only (folders 0700, files 0600), whatever the umask. Adapter folders handed
to an inference server running as another user are the one deliberate exception (`inference/adapters.py`).

`DiskSpace` answers "may this much new data be written here?" cheaply enough to ask for every chunk: the
free space is read with `statvfs` at most once a second, and bytes written in between are subtracted.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tunewright.storage.errors import InsufficientStorage

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

logger = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""What a write returns when the file system (or the user's quota) has no room left."""

FREE_SPACE_MAX_AGE_S = 1.0
"""How long a `statvfs` reading is trusted before the next check reads it again."""


def make_private_dir(path: Path) -> None:
    """Create the folder `path`, and its missing parents, each 0700; an existing folder is left as it is.

    (`Path.mkdir(parents=True, mode=…)` applies the mode to the last folder only.)

    Raises:
        FileExistsError: `path` or a parent exists and is not a folder.
        OSError: a folder could not be created.
    """
    if path.is_dir():
        return
    if path.parent != path:
        make_private_dir(path.parent)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise  # a file is in the way; a folder made concurrently is fine


def create_private_file(path: Path) -> None:
    """Create the empty file `path` as 0600 unless it exists (an existing file keeps its mode and content)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    os.close(fd)


def warn_if_shared(path: Path) -> None:
    """Log a warning when an existing data folder is open to other users (it predates the private modes)."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        logger.warning(
            "%s is readable by other users (mode %03o): it holds every tenant's data; `chmod 700` it", path, mode
        )


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is an OS error saying the file system or the quota has no room left."""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


class DiskSpace:
    """Free space of the file system holding `path`, checked against `min_free_bytes`.

    Thread-safe. Readings are cached for `max_age_s`; bytes noted through `guard` since the last reading are
    subtracted from it, so a fast writer cannot run far past the watermark between two readings. A refusal
    always reads the disk again first, so space freed a moment ago is seen at once.

    Args:
        path: an existing folder on the file system to watch.
        min_free_bytes: the watermark; 0 turns the check off.
        max_age_s: how long a reading is trusted.
        statvfs: the reading function (tests pass a fake).
    """

    def __init__(
        self,
        path: Path,
        *,
        min_free_bytes: int,
        max_age_s: float = FREE_SPACE_MAX_AGE_S,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.path = path
        self.min_free_bytes = min_free_bytes
        self._max_age_s = max_age_s
        self._statvfs = statvfs
        self._lock = threading.Lock()
        self._free = 0
        self._read_at = float("-inf")

    def free_bytes(self, *, fresh: bool = False) -> int:
        """Bytes an unprivileged writer may still use there (less what was written since the last reading)."""
        with self._lock:
            now = time.monotonic()
            if fresh or now - self._read_at > self._max_age_s:
                info = self._statvfs(self.path)
                self._free = info.f_bavail * info.f_frsize
                self._read_at = now
            return self._free

    def _spent(self, size: int) -> None:
        with self._lock:
            self._free -= size

    def require(self, incoming: int = 0) -> None:
        """Return if `incoming` more bytes leave at least the watermark free, else raise.

        Raises:
            InsufficientStorage: they would not (checked against a fresh reading).
        """
        if self.min_free_bytes <= 0 or self.free_bytes() - incoming >= self.min_free_bytes:
            return
        free = self.free_bytes(fresh=True)
        if free - incoming >= self.min_free_bytes:
            return
        raise InsufficientStorage(
            f"{self.path}: {free} bytes free, {incoming} more requested, at least {self.min_free_bytes} kept free "
            "(TUNEWRIGHT_MIN_FREE_BYTES)"
        )

    def guard(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Yield `chunks`, refusing the next one once writing it would cross the watermark.

        Raises:
            InsufficientStorage: the watermark was reached mid-stream (the caller's put then stores nothing).
        """
        for chunk in chunks:
            self.require(len(chunk))
            self._spent(len(chunk))
            yield chunk


def disk_space(blobs: object, *, min_free_bytes: int) -> DiskSpace | None:
    """The watermark check of a local blob store (its `root` folder); None for S3 or a watermark of 0."""
    root = getattr(blobs, "root", None)
    if min_free_bytes <= 0 or not isinstance(root, Path):
        return None
    return _disk_space(root, min_free_bytes)


@functools.lru_cache(maxsize=64)
def _disk_space(root: Path, min_free_bytes: int) -> DiskSpace:
    # One per process and blob root, so that every request shares one reading and one count of bytes written.
    return DiskSpace(root, min_free_bytes=min_free_bytes)

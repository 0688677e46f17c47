"""Free space against the watermark, and a full disk reported as `InsufficientStorage` by every store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures.disk import MiB, fill

from tunewright.storage.db import SQLiteDatabase, _postgres_error
from tunewright.storage.disk import DiskSpace
from tunewright.storage.errors import InsufficientStorage
from tunewright.storage.local import LocalBlobStore


class FakeDisk:
    """A file system whose free space the test sets; counts the readings."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.readings = 0

    def statvfs(self, _path: Path) -> Any:
        self.readings += 1
        return os.statvfs_result((4096, 4096, 0, 0, self.free // 4096, 0, 0, 0, 0, 255))


def test_readings_are_cached_and_written_bytes_count_until_the_next_one() -> None:
    disk = FakeDisk(10 * MiB)
    space = DiskSpace(Path("/data"), min_free_bytes=4 * MiB, max_age_s=3600, statvfs=disk.statvfs)
    written = []
    with pytest.raises(InsufficientStorage):
        for chunk in space.guard(b"x" * MiB for _ in range(10)):
            disk.free -= len(chunk)
            written.append(chunk)
    assert len(written) == 6  # the 7th would leave 3 MiB
    assert disk.readings == 2  # the first one, and a fresh one before refusing
    disk.free += 2 * MiB  # a file was deleted
    space.require(MiB)  # seen at once: a refusal always reads again
    assert disk.readings == 3


def test_a_watermark_of_zero_reads_nothing() -> None:
    disk = FakeDisk(0)
    space = DiskSpace(Path("/data"), min_free_bytes=0, statvfs=disk.statvfs)
    space.require(10 * MiB)
    assert list(space.guard([b"abc"])) == [b"abc"]
    assert disk.readings == 0


def test_a_full_disk_fails_a_local_put_with_insufficient_storage_and_no_temp_file(small_tmpfs: Any) -> None:
    disk = small_tmpfs(4)
    store = LocalBlobStore(str(disk / "blobs"))
    with pytest.raises(InsufficientStorage):
        store.put("p/files/big", (b"x" * MiB for _ in range(8)))
    assert [p for p in (disk / "blobs").rglob("*") if p.is_file()] == []
    assert store.put("p/files/small", b"x" * MiB).size == MiB  # the space came back


def test_a_full_disk_fails_a_sqlite_write_with_insufficient_storage_and_the_connection_recovers(
    small_tmpfs: Any,
) -> None:
    disk = small_tmpfs(2)
    database = SQLiteDatabase(disk / "meta.db")
    try:
        with database.transaction(immediate=True) as conn:
            conn.execute("CREATE TABLE t (v BLOB)")
        filler = fill(disk)
        with pytest.raises(InsufficientStorage), database.transaction(immediate=True) as conn:
            conn.execute("INSERT INTO t VALUES (:v)", {"v": b"x" * MiB})
        filler.unlink()
        with database.transaction(immediate=True) as conn:
            conn.execute("INSERT INTO t VALUES (:v)", {"v": b"x" * MiB})
    finally:
        database.close()


def test_a_postgres_disk_full_error_is_insufficient_storage() -> None:
    assert isinstance(_postgres_error(psycopg.errors.DiskFull("could not extend file")), InsufficientStorage)

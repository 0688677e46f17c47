"""What the service creates on the local disk is its user's only: folders 0700, files 0600, whatever the umask.

The one exception is an adapter folder handed to an inference server running as another user (0755).
"""

from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING

import pytest

from tunewright.clients.cli.datadir import open_data
from tunewright.inference.adapters import ADAPTER_FILES, fetch_adapter
from tunewright.inference.engine import AdapterRef
from tunewright.storage.db import open_database
from tunewright.storage.local import LocalBlobStore
from tunewright.storage.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022], ids=["umask-000", "umask-022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_a_new_data_dir_its_blobs_and_the_sqlite_files_are_private(tmp_path: Path, umask: int) -> None:
    data_dir = tmp_path / "srv" / "tunewright"  # its parent is missing too
    settings = load_settings({}, data_dir=str(data_dir))
    with open_data(settings) as data:
        blobs = data.stores.blobs
        blobs.put("proj/files/file-1", b"tenant data")
        blobs.concat("proj/files/file-2", ["proj/files/file-1", "proj/files/file-1"])
        data.stores.metadata.begin_blob("proj/files/file-3", now=0)  # a write, so the WAL has content
        database = data_dir / "tunewright.db"
        private_files = [database, database.with_name("tunewright.db-wal"), database.with_name("tunewright.db-shm")]
        private_files += [data_dir / "blobs" / "proj" / "files" / name for name in ("file-1", "file-2")]
        private_dirs = [tmp_path / "srv", data_dir, data_dir / "blobs", data_dir / "blobs" / "proj"]
        private_dirs.append(data_dir / "blobs" / "proj" / "files")
        assert {str(p.relative_to(tmp_path)): mode(p) for p in private_files} == {
            str(p.relative_to(tmp_path)): 0o600 for p in private_files
        }
        assert {str(p.relative_to(tmp_path)): mode(p) for p in private_dirs} == {
            str(p.relative_to(tmp_path)): 0o700 for p in private_dirs
        }


def test_a_sqlite_database_outside_the_data_dir_is_private(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "db" / "meta.db"
    database = open_database(f"sqlite:///{path}")
    try:
        with database.transaction(immediate=True) as conn:
            conn.execute("CREATE TABLE t (x INTEGER)")
    finally:
        database.close()
    assert (mode(path.parent), mode(path)) == (0o700, 0o600)


def test_an_existing_data_dir_keeps_its_mode_and_a_shared_one_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    with caplog.at_level(logging.WARNING), open_data(load_settings({}, data_dir=str(data_dir))):
        pass
    assert mode(data_dir) == 0o755  # the operator's choice is not changed behind their back
    assert any("readable by other users" in record.getMessage() for record in caplog.records)


def test_adapter_folders_for_an_inference_server_stay_readable_by_other_users(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        blobs = LocalBlobStore(str(tmp_path / "blobs"))
        for name in ADAPTER_FILES:
            blobs.put(f"proj/adapters/m/{name}", b"{}")
        shared = tmp_path / "shared-adapters"
        shared.mkdir()
        fetch_adapter(AdapterRef(name="ft:m", blob_prefix="proj/adapters/m"), blobs, shared / "m")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "blobs" / "proj" / "adapters" / "m" / ADAPTER_FILES[0]) == 0o600
    assert mode(shared / "m") == 0o755
    assert all(mode(shared / "m" / name) & 0o044 == 0o044 for name in ADAPTER_FILES)

"""The BlobStore contract, run against every implementation: LocalBlobStore, and S3BlobStore on moto."""

from __future__ import annotations

import gc
import hashlib
import io
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
from fixtures.s3 import free_port

from tunewright.storage.errors import InvalidKey, NotFound, Unavailable
from tunewright.storage.local import LocalBlobStore
from tunewright.storage.s3 import S3BlobStore

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tunewright.storage.base import BlobStore

MiB = 1024 * 1024
PART_SIZE = 5 * MiB  # S3's minimum part: the 12 MiB cases below become 3-part multipart uploads
S3_PREFIX = "tw/contract"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    """Every BlobStore implementation, empty."""
    store: LocalBlobStore | S3BlobStore
    if request.param == "local":
        store = LocalBlobStore(str(tmp_path / "blobs"))
    else:
        endpoint, bucket = request.getfixturevalue("s3_bucket")
        store = S3BlobStore(
            bucket=bucket,
            prefix=S3_PREFIX,
            endpoint_url=endpoint,
            region=None,
            part_size=PART_SIZE,
            session=request.getfixturevalue("s3_session"),
        )
    yield store
    store.close()


def make_bytes(size: int) -> bytes:
    return os.urandom(size)


def read_all(store: BlobStore, key: str) -> bytes:
    return b"".join(store.open(key))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(store: BlobStore, request: pytest.FixtureRequest) -> list[str]:
    """Everything the store holds: files under the root (temp files too), or S3 objects and open uploads."""
    if isinstance(store, LocalBlobStore):
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
    _, bucket = request.getfixturevalue("s3_bucket")
    client = request.getfixturevalue("s3_admin")
    objects = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sorted([o["Key"] for o in objects] + [f"upload:{u['Key']}" for u in uploads])


# --- put / open ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 11, 12 * MiB + 3], ids=["empty", "small", "multipart"])
def test_put_then_open_returns_the_same_bytes(blob_store: BlobStore, size: int) -> None:
    data = make_bytes(size)
    info = blob_store.put("proj/files/f1", io.BytesIO(data))
    assert (info.size, info.sha256) == (size, sha256(data))
    assert read_all(blob_store, "proj/files/f1") == data
    assert blob_store.size("proj/files/f1") == size


def test_put_accepts_an_iterable_of_uneven_chunks(blob_store: BlobStore) -> None:
    pieces = [b"a", b"", bytearray(b"bc"), memoryview(b"def"), make_bytes(6 * MiB), b"", make_bytes(7)]
    data = b"".join(bytes(p) for p in pieces)
    info = blob_store.put("proj/files/f1", iter(pieces))
    assert (info.size, info.sha256) == (len(data), sha256(data))
    assert read_all(blob_store, "proj/files/f1") == data


def test_put_accepts_a_real_file_object(blob_store: BlobStore, tmp_path: Path) -> None:
    data = make_bytes(3 * MiB + 5)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    with source.open("rb") as fh:
        info = blob_store.put("proj/files/f1", fh)
    assert (info.size, info.sha256) == (len(data), sha256(data))
    assert read_all(blob_store, "proj/files/f1") == data


def test_open_yields_chunks_of_the_requested_size(blob_store: BlobStore) -> None:
    blob_store.put("proj/files/f1", [b"x" * 2500])
    chunks = list(blob_store.open("proj/files/f1", chunk_size=1000))
    assert b"".join(chunks) == b"x" * 2500
    assert all(len(c) <= 1000 for c in chunks) and len(chunks) >= 3


def test_overwrite_is_atomic_for_readers(blob_store: BlobStore) -> None:
    old = make_bytes(1000)
    new = make_bytes(12 * MiB)
    blob_store.put("proj/files/f1", [old])
    seen_during_write: list[bytes] = []

    def slow_new() -> Iterator[bytes]:
        for i in range(12):
            if i == 7:  # S3: the multipart upload has its first part by now
                seen_during_write.append(read_all(blob_store, "proj/files/f1"))
            yield new[i * MiB : (i + 1) * MiB]

    blob_store.put("proj/files/f1", slow_new())
    assert seen_during_write == [old]
    assert read_all(blob_store, "proj/files/f1") == new


@pytest.mark.parametrize(
    ("size", "limit"), [(100, 99), (12 * MiB, 7 * MiB)], ids=["single-part", "after-multipart-began"]
)
def test_put_over_max_bytes_stores_nothing(
    blob_store: BlobStore, request: pytest.FixtureRequest, size: int, limit: int
) -> None:
    data = make_bytes(size)
    with pytest.raises(ValueError, match="max_bytes"):
        blob_store.put("proj/files/f1", io.BytesIO(data), max_bytes=limit)
    with pytest.raises(NotFound):
        blob_store.open("proj/files/f1")
    assert leftovers(blob_store, request) == []


def test_put_at_exactly_max_bytes_succeeds(blob_store: BlobStore) -> None:
    info = blob_store.put("proj/files/f1", [b"12345"], max_bytes=5)
    assert info.size == 5


def test_failed_overwrite_keeps_the_old_object(blob_store: BlobStore, request: pytest.FixtureRequest) -> None:
    blob_store.put("proj/files/f1", [b"old"])

    def broken() -> Iterator[bytes]:
        yield make_bytes(6 * MiB)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="went away"):
        blob_store.put("proj/files/f1", broken())
    assert read_all(blob_store, "proj/files/f1") == b"old"
    assert len(leftovers(blob_store, request)) == 1


# --- missing objects, delete -----------------------------------------------------------------------


def test_open_of_missing_key_raises_not_found_at_the_call(blob_store: BlobStore) -> None:
    with pytest.raises(NotFound):
        blob_store.open("proj/files/missing")  # not iterated: the check is eager


def test_size_of_missing_key_raises_not_found(blob_store: BlobStore) -> None:
    with pytest.raises(NotFound):
        blob_store.size("proj/files/missing")


def test_a_folder_is_not_an_object(blob_store: BlobStore) -> None:
    blob_store.put("proj/files/f1", [b"x"])
    with pytest.raises(NotFound):
        blob_store.open("proj/files")
    with pytest.raises(NotFound):
        blob_store.size("proj/files")


def test_delete_is_idempotent(blob_store: BlobStore) -> None:
    blob_store.put("proj/files/f1", [b"x"])
    blob_store.delete("proj/files/f1")
    blob_store.delete("proj/files/f1")
    blob_store.delete("proj/never/existed")
    with pytest.raises(NotFound):
        blob_store.size("proj/files/f1")


def test_delete_prefix_removes_only_that_folder(blob_store: BlobStore) -> None:
    for key in ("p/a/1", "p/a/2", "p/a/sub/3", "p/ab/4", "q/a/5"):
        blob_store.put(key, [key.encode()])
    assert blob_store.delete_prefix("p/a/") == 3
    assert blob_store.delete_prefix("p/a/") == 0
    assert read_all(blob_store, "p/ab/4") == b"p/ab/4"
    assert read_all(blob_store, "q/a/5") == b"q/a/5"
    for key in ("p/a/1", "p/a/sub/3"):
        with pytest.raises(NotFound):
            blob_store.size(key)
    blob_store.put("p/a/1", [b"again"])  # the folder can be written again
    assert read_all(blob_store, "p/a/1") == b"again"


# --- concat ----------------------------------------------------------------------------------------


def test_concat_of_uneven_parts_gives_the_exact_bytes(blob_store: BlobStore) -> None:
    parts = [make_bytes(1), make_bytes(6 * MiB), make_bytes(2 * MiB)]
    for i, part in enumerate(parts):
        blob_store.put(f"proj/parts/{i}", [part])
    info = blob_store.concat("proj/files/whole", [f"proj/parts/{i}" for i in range(3)])
    whole = b"".join(parts)
    assert (info.size, info.sha256) == (len(whole), sha256(whole))
    assert read_all(blob_store, "proj/files/whole") == whole
    assert read_all(blob_store, "proj/parts/1") == parts[1]  # parts are left in place


def test_concat_of_small_parts_and_of_none(blob_store: BlobStore) -> None:
    for i, part in enumerate([b"ab", b"", b"c"]):
        blob_store.put(f"proj/parts/{i}", [part])
    assert blob_store.concat("proj/files/abc", ["proj/parts/0", "proj/parts/1", "proj/parts/2"]).size == 3
    assert read_all(blob_store, "proj/files/abc") == b"abc"
    assert blob_store.concat("proj/files/none", []).size == 0
    assert read_all(blob_store, "proj/files/none") == b""


def test_concat_with_a_missing_part_stores_nothing(blob_store: BlobStore) -> None:
    blob_store.put("proj/parts/0", [make_bytes(6 * MiB)])
    with pytest.raises(NotFound):
        blob_store.concat("proj/files/whole", ["proj/parts/0", "proj/parts/missing"])
    with pytest.raises(NotFound):
        blob_store.size("proj/files/whole")


# --- keys ------------------------------------------------------------------------------------------

BAD_KEYS = [
    "../x",
    "/abs",
    "a//b",
    "a/../b",
    "",
    "a/./b",
    "a/",
    "a\\b",
    "a\x00b",
    "a/.f.tmp-0123456789abcdef",  # the temp-file pattern sweep_temp removes
    "k" * 1025,  # S3's limit, enforced everywhere
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_refused_by_every_method(blob_store: BlobStore, key: str) -> None:
    calls = [
        lambda: blob_store.put(key, [b"x"]),
        lambda: blob_store.open(key),
        lambda: blob_store.size(key),
        lambda: blob_store.delete(key),
        lambda: blob_store.concat(key, []),
        lambda: blob_store.concat("ok/key", [key]),
        lambda: blob_store.presign(key, 60),
    ]
    for call in calls:
        with pytest.raises(InvalidKey):
            call()


@pytest.mark.parametrize("prefix", ["", "/", "p/a", "../", "p//", "/p/"])
def test_delete_prefix_needs_a_folder(blob_store: BlobStore, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        blob_store.delete_prefix(prefix)


# --- presign, ping ---------------------------------------------------------------------------------


def test_presign_gives_a_readable_url_or_none(blob_store: BlobStore) -> None:
    data = make_bytes(1234)
    blob_store.put("proj/files/f1", [data])
    url = blob_store.presign("proj/files/f1", 60)
    if isinstance(blob_store, LocalBlobStore):
        assert url is None
        return
    assert url is not None
    with urllib.request.urlopen(url, timeout=10) as response:  # plain HTTP, no AWS credentials involved
        assert response.read() == data


def test_ping_succeeds_on_a_working_store(blob_store: BlobStore) -> None:
    blob_store.ping()


# --- streaming memory ------------------------------------------------------------------------------


def test_put_and_open_of_64_mib_stream_in_bounded_memory(blob_store: BlobStore) -> None:
    block = make_bytes(MiB)
    expected = hashlib.sha256()
    for _ in range(64):
        expected.update(block)

    def blocks() -> Iterator[bytes]:
        for _ in range(64):
            yield block

    gc.collect()
    tracemalloc.start()
    try:
        info = blob_store.put("proj/files/big", blocks())
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read = hashlib.sha256()
        for chunk in blob_store.open("proj/files/big"):
            read.update(chunk)
        _, open_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (info.size, info.sha256) == (64 * MiB, expected.hexdigest())
    assert read.hexdigest() == expected.hexdigest()
    assert put_peak < 24 * MiB, f"put peaked at {put_peak / MiB:.1f} MiB"
    assert open_peak < 24 * MiB, f"open peaked at {open_peak / MiB:.1f} MiB"


# --- S3 only ---------------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_uses_multipart_above_the_part_size_under_the_prefix(
    s3_bucket: tuple[str, str], s3_session: Any, s3_admin: Any
) -> None:
    endpoint, bucket = s3_bucket
    store = S3BlobStore(
        bucket=bucket,
        prefix="/tw/x/",
        endpoint_url=endpoint,
        region=None,
        part_size=PART_SIZE,
        session=s3_session,
    )
    try:
        store.put("proj/files/big", [make_bytes(12 * MiB)])
        store.put("proj/files/one", [make_bytes(PART_SIZE)])  # exactly one part: a single PUT
    finally:
        store.close()
    big = s3_admin.head_object(Bucket=bucket, Key="tw/x/proj/files/big")
    one = s3_admin.head_object(Bucket=bucket, Key="tw/x/proj/files/one")
    assert big["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB
    assert "-" not in one["ETag"]


@pytest.mark.s3
def test_s3_ping_of_a_dead_endpoint_is_unavailable(aws_credentials: None) -> None:
    store = S3BlobStore(bucket="b", prefix="", endpoint_url=f"http://127.0.0.1:{free_port()}", region=None)
    try:
        with pytest.raises(Unavailable):
            store.ping()
        with pytest.raises(Unavailable):
            store.size("proj/files/f1")
    finally:
        store.close()


@pytest.mark.s3
def test_s3_ping_of_a_missing_bucket_is_unavailable(s3_endpoint: str, s3_session: Any) -> None:
    store = S3BlobStore(
        bucket="tw-no-such-bucket", prefix="", endpoint_url=s3_endpoint, region=None, session=s3_session
    )
    try:
        with pytest.raises(Unavailable):
            store.ping()
    finally:
        store.close()


CRASHING_S3_PUT = textwrap.dedent(
    """
    import os, sys
    from tunewright.storage.s3 import S3BlobStore

    def chunks():
        yield b"x" * (6 * 1024 * 1024)  # more than a part: the multipart upload has begun
        os._exit(3)  # the process dies mid-upload: no abort runs

    endpoint, bucket, prefix = sys.argv[1:]
    S3BlobStore(bucket=bucket, prefix=prefix, endpoint_url=endpoint, part_size=5 * 1024 * 1024).put("p/f", chunks())
    """
)


@pytest.mark.s3
def test_s3_stale_multipart_uploads_of_crashed_puts_are_aborted_under_the_prefix_only(
    s3_bucket: tuple[str, str], s3_session: Any, s3_admin: Any
) -> None:
    endpoint, bucket = s3_bucket
    crashed = subprocess.run([sys.executable, "-c", CRASHING_S3_PUT, endpoint, bucket, S3_PREFIX], timeout=120)
    assert crashed.returncode == 3
    s3_admin.create_multipart_upload(Bucket=bucket, Key="someone-else/f")  # not under our prefix
    s3_admin.create_multipart_upload(Bucket=bucket, Key=f"{S3_PREFIX}-other/f")  # a sibling prefix
    # Ages are measured from the server's `Initiated` (moto's is a fixed date in the past).
    started = s3_admin.list_multipart_uploads(Bucket=bucket, Prefix=S3_PREFIX + "/")["Uploads"][0]["Initiated"]
    store = S3BlobStore(bucket=bucket, prefix=S3_PREFIX, endpoint_url=endpoint, region=None, session=s3_session)
    try:
        assert store.abort_stale_uploads(3600, now=started.timestamp() + 60) == 0  # young: may be a put in flight
        assert store.abort_stale_uploads(3600, now=started.timestamp() + 7200) == 1
        assert store.abort_stale_uploads(3600) == 0
    finally:
        store.close()
    open_uploads = s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert sorted(u["Key"] for u in open_uploads) == ["someone-else/f", f"{S3_PREFIX}-other/f"]


def test_s3_part_size_below_the_s3_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="part_size"):
        S3BlobStore(bucket="b", prefix="", endpoint_url="http://127.0.0.1:9", region=None, part_size=MiB)


# --- local only ------------------------------------------------------------------------------------

CRASHING_PUT = textwrap.dedent(
    """
    import os, sys
    from tunewright.storage.local import LocalBlobStore

    def chunks():
        yield b"x" * 1000
        os._exit(3)  # the process dies mid-upload: no cleanup runs

    LocalBlobStore(sys.argv[1]).put("proj/files/f1", chunks())
    """
)


def test_local_sweep_temp_removes_what_a_crashed_put_left(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    store = LocalBlobStore(str(root))
    store.put("proj/files/kept", [b"keep me"])
    crashed = subprocess.run([sys.executable, "-c", CRASHING_PUT, str(root)], check=False, timeout=60)
    assert crashed.returncode == 3
    temps = list(root.rglob("*.tmp-*"))
    assert len(temps) == 1
    with pytest.raises(NotFound):
        store.size("proj/files/f1")

    assert store.sweep_temp(older_than_s=3600) == 0  # too fresh: might be a put in flight
    an_hour_ago = time.time() - 3600
    os.utime(temps[0], (an_hour_ago, an_hour_ago))
    assert store.sweep_temp(older_than_s=600) == 1
    assert not temps[0].exists()
    assert read_all(store, "proj/files/kept") == b"keep me"


def test_local_ping_of_a_missing_root_is_unavailable(tmp_path: Path) -> None:
    store = LocalBlobStore(str(tmp_path / "blobs"))
    (tmp_path / "blobs").rmdir()
    with pytest.raises(Unavailable):
        store.ping()


def test_local_put_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalBlobStore(str(tmp_path / "blobs"))
    store.put("proj/files/f1", [b"a"])
    store.put("proj/files/f1", [b"b"])
    assert [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == ["f1"]

"""Upload throughput and server memory: 1 GiB of JSONL through `/v1/files` and `/v1/uploads`, local and S3.

For each of the six combinations (route x blob store) a fresh Tunewright server runs as its own granian
process (1 ASGI worker, SQLite in a temp dir), is warmed up with a 1 MiB upload of the same kind, and then
receives `--size-mb` MiB of valid chat-format JSON Lines, generated on the fly 1 MiB at a time (the client
never holds the file). `/v1/files` sends one multipart request (`/v1/files+key`: with an `Idempotency-Key`, whose
fingerprint is taken as the body streams in); `/v1/uploads` creates an upload, sends 64 MiB parts and completes
it (complete reads the parts back and writes the file, as the server must). The server's resident memory
(granian's process and its worker, from /proc) is sampled every 10 ms: the table gives the peak growth over the
value just before the upload (goal in issue 3: at most 64 MiB).

The baselines, measured in each round from a temp file of the same bytes: a plain copy (`shutil.copyfileobj`
+ fsync), and for S3 a plain boto3 `upload_fileobj` to the same moto server (one thread, 8 MiB parts, as
S3BlobStore sends them). S3 is moto's server on loopback: it keeps every object in its own memory (its RSS
is not counted) and, being Python, is slow; the "vs S3 put" ratio takes that out.

    .venv/bin/python bench/upload.py                 # 1 GiB, 3 rounds, medians
    .venv/bin/python bench/upload.py --size-mb 256 --rounds 1

`/v1/files` refuses files over `max_file_bytes` (default 512 MB): the servers here run with
TUNEWRIGHT_MAX_FILE_BYTES raised to the upload size. Temp files are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from data import MIB, jsonl_block, jsonl_stream, make_tenant
from server import FAKE_AWS_ENV, Process, ProcessTree, RssSampler, granian, load_average, moto

from tunewright.storage.registry import open_stores
from tunewright.storage.settings import ENV_PREFIX, load_settings

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

PART_MIB = 64
MB = 1_000_000


class Multipart:
    """A multipart/form-data body built on the fly: text fields, then one file part streamed from chunks."""

    def __init__(self, fields: dict[str, str], file_field: str, chunks: Iterable[bytes], file_size: int) -> None:
        """Frame `chunks` (exactly `file_size` bytes) as the file part `file_field` after `fields`."""
        self.boundary = uuid.uuid4().hex
        head = b"".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields.items()
        )
        head += (
            f"--{self.boundary}\r\nContent-Disposition: form-data; "
            f'name="{file_field}"; filename="train.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
        ).encode()
        self.head = head
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.chunks = chunks
        self.length = len(head) + file_size + len(self.tail)

    @property
    def headers(self) -> dict[str, str]:
        """Content-Type with the boundary, and the exact Content-Length (so the body is not chunked)."""
        return {
            "content-type": f"multipart/form-data; boundary={self.boundary}",
            "content-length": str(self.length),
        }

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        yield from self.chunks
        yield self.tail


def check(response: httpx.Response) -> Any:
    """The JSON body of a 200, or an error naming the server's answer."""
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json()


def upload_file(client: httpx.Client, size_mib: int, block: bytes, headers: dict[str, str] | None = None) -> str:
    """`POST /v1/files` (purpose fine-tune) of `size_mib` MiB; returns the file id."""
    body = Multipart({"purpose": "fine-tune"}, "file", jsonl_stream(size_mib, block=block), size_mib * MIB)
    file = check(client.post("/v1/files", content=iter(body), headers={**body.headers, **(headers or {})}))
    assert file["bytes"] == size_mib * MIB and file["status"] == "processed", file
    return str(file["id"])


def upload_parts(client: httpx.Client, size_mib: int, block: bytes) -> str:
    """`POST /v1/uploads`, `size_mib` MiB in 64 MiB parts, then complete; returns the file id."""
    upload = check(
        client.post(
            "/v1/uploads",
            json={
                "purpose": "fine-tune",
                "filename": "train.jsonl",
                "bytes": size_mib * MIB,
                "mime_type": "application/jsonl",
            },
        )
    )
    part_ids = []
    for start in range(0, size_mib, PART_MIB):
        part_mib = min(PART_MIB, size_mib - start)
        body = Multipart({}, "data", jsonl_stream(part_mib, block=block), part_mib * MIB)
        part = check(client.post(f"/v1/uploads/{upload['id']}/parts", content=iter(body), headers=body.headers))
        part_ids.append(part["id"])
    done = check(client.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": part_ids}))
    assert done["status"] == "completed" and done["file"]["bytes"] == size_mib * MIB, done
    return str(done["file"]["id"])


def upload_file_keyed(client: httpx.Client, size_mib: int, block: bytes) -> str:
    """`upload_file` with an `Idempotency-Key`: the body's fingerprint is taken as it streams in."""
    return upload_file(client, size_mib, block, {"Idempotency-Key": uuid.uuid4().hex})


ROUTES = {"/v1/files": upload_file, "/v1/files+key": upload_file_keyed, "/v1/uploads": upload_parts}


class Measurement:
    """One timed upload: MB/s and the server's peak RSS growth."""

    def __init__(self, seconds: float, size: int, growth_mib: float) -> None:
        """Hold the figures."""
        self.mb_s = size / MB / seconds
        self.growth_mib = growth_mib


def write_source(path: Path, size_mib: int, block: bytes) -> Path:
    """Write the benchmark's bytes to `path` (for the baselines)."""
    with path.open("wb") as fh:
        for chunk in jsonl_stream(size_mib, block=block):
            fh.write(chunk)
    return path


def plain_copy(source: Path) -> float:
    """MB/s of `shutil.copyfileobj` (+ fsync) of `source` into a new file, removed after."""
    target = source.with_name("copy-target.jsonl")
    try:
        started = time.monotonic()
        with source.open("rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, MIB)
            dst.flush()
            os.fsync(dst.fileno())
        return source.stat().st_size / MB / (time.monotonic() - started)
    finally:
        target.unlink(missing_ok=True)


def plain_s3_put(source: Path, endpoint: str, blob_url: str) -> float:
    """MB/s of boto3 `upload_fileobj` of `source` to moto, one thread, 8 MiB parts like S3BlobStore; deleted after."""
    from boto3.s3.transfer import TransferConfig

    bucket = blob_url[len("s3://") :].split("/", 1)[0]
    client = s3_client(endpoint)
    config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, use_threads=False)
    try:
        started = time.monotonic()
        with source.open("rb") as fh:
            client.upload_fileobj(fh, bucket, "baseline/plain-put", Config=config)
        return source.stat().st_size / MB / (time.monotonic() - started)
    finally:
        client.delete_object(Bucket=bucket, Key="baseline/plain-put")
        client.close()


def measure_one(server: Process, key: str, route: str, size_mib: int, block: bytes) -> Measurement:
    """Warm the server up with 1 MiB on `route`, then time `size_mib` MiB while sampling its RSS."""
    send = ROUTES[route]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=httpx.Timeout(600.0)) as client:
        client.delete(f"/v1/files/{send(client, 1, block)}")
        time.sleep(0.5)
        with RssSampler(ProcessTree(server.pid)) as rss:
            started = time.monotonic()
            file_id = send(client, size_mib, block)
            seconds = time.monotonic() - started
        check(client.delete(f"/v1/files/{file_id}"))  # frees the disk, or moto's memory
    return Measurement(seconds, size_mib * MIB, rss.growth_mib)


def server_env(tmp: Path, blob_url: str, s3_endpoint: str | None, max_file_bytes: int) -> dict[str, str]:
    """This environment without other `TUNEWRIGHT_*` settings, plus the benchmark's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(FAKE_AWS_ENV)
    env.update(
        {
            ENV_PREFIX + "DATA_DIR": str(tmp / "data"),
            ENV_PREFIX + "BLOB_URL": blob_url,
            ENV_PREFIX + "MAX_FILE_BYTES": str(max_file_bytes),
            ENV_PREFIX + "LOG_LEVEL": "WARNING",
        }
    )
    if s3_endpoint:
        env[ENV_PREFIX + "S3_ENDPOINT_URL"] = s3_endpoint
    return env


def seed(tmp: Path) -> str:
    """Migrate the SQLite database and create a tenant; return its key."""
    stores = open_stores(load_settings({}, data_dir=str(tmp / "data")))
    try:
        stores.metadata.migrate()
        return make_tenant(stores, "bench").key
    finally:
        stores.close()


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client on the moto server."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


def make_bucket(endpoint: str) -> str:
    """Create a bucket on the moto server; return its name."""
    bucket = f"tw-bench-{uuid.uuid4().hex[:12]}"
    client = s3_client(endpoint)
    client.create_bucket(Bucket=bucket)
    client.close()
    return bucket


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="upload size in MiB (default: 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="uploads per combination; medians (default: 3)")
    parser.add_argument("--stores", default="local,s3", help="blob stores to run: local,s3 (default: both)")
    args = parser.parse_args()
    stores = args.stores.split(",")
    size = args.size_mb * MIB
    block = jsonl_block()

    tmp = Path(tempfile.mkdtemp(prefix="tunewright-bench-upload-"))
    results: dict[tuple[str, str], list[Measurement]] = {}
    baselines: dict[str, list[float]] = {"local": [], "s3": []}
    load_before = load_average()
    try:
        key = seed(tmp)
        with contextlib.ExitStack() as stack:
            s3_endpoint = None
            blob_urls = {"local": f"file://{tmp / 'data' / 'blobs'}"}
            if "s3" in stores:
                s3 = stack.enter_context(moto(log_dir=tmp).start({**os.environ, **FAKE_AWS_ENV}))
                s3_endpoint = s3.url
                blob_urls["s3"] = f"s3://{make_bucket(s3.url)}/bench"
            for round_no in range(1, args.rounds + 1):
                source = write_source(tmp / "source.jsonl", args.size_mb, block)
                try:
                    baselines["local"].append(plain_copy(source))
                    print(f"round {round_no} plain copy             {baselines['local'][-1]:8.1f} MB/s", flush=True)
                    if s3_endpoint:
                        baselines["s3"].append(plain_s3_put(source, s3_endpoint, blob_urls["s3"]))
                        print(f"round {round_no} plain S3 put (boto3)   {baselines['s3'][-1]:8.1f} MB/s", flush=True)
                finally:
                    source.unlink()
                for store in stores:
                    env = server_env(tmp, blob_urls[store], s3_endpoint if store == "s3" else None, size)
                    for route in ROUTES:
                        target = "tunewright.api.asgi:create_app_from_env"
                        with granian(f"tunewright-{store}", target, log_dir=tmp, factory=True).start(env) as server:
                            result = measure_one(server, key, route, args.size_mb, block)
                        results.setdefault((route, store), []).append(result)
                        print(
                            f"round {round_no} {route:13} {store:5} {result.mb_s:8.1f} MB/s  "
                            f"RSS +{result.growth_mib:.1f} MiB",
                            flush=True,
                        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, results, baselines, load_before)
    return 0


def report(
    args: argparse.Namespace,
    results: dict[tuple[str, str], list[Measurement]],
    baselines: dict[str, list[float]],
    load_before: str,
) -> None:
    """Print the table of medians."""
    copy = statistics.median(baselines["local"])
    s3_put = statistics.median(baselines["s3"]) if baselines["s3"] else None
    print()
    print(f"{args.size_mb} MiB of JSONL per upload (/v1/uploads: {PART_MIB} MiB parts + complete); SQLite metadata")
    print(
        f"server: granian, 1 ASGI worker, TUNEWRIGHT_MAX_FILE_BYTES={args.size_mb * MIB} "
        "(default 536870912 = 512 MiB; set to the upload size so /v1/files accepts it)"
    )
    print(
        f"median of {args.rounds} rounds; MB = 10^6 bytes; load average before: {load_before}, after: {load_average()}"
    )
    print(f"plain copy (copyfileobj + fsync): {copy:.1f} MB/s")
    if s3_put is not None:
        print(f"plain S3 put to the same moto (boto3 upload_fileobj, 1 thread, 8 MiB parts): {s3_put:.1f} MB/s")
    print()
    print(
        f"| {'route':<13} | {'store':<5} | {'MB/s':>7} | {'vs copy':>7} | {'vs S3 put':>9} | {'peak RSS growth':>15} |"
    )
    print(f"| {'-' * 13} | {'-' * 5} | {'-' * 7}:| {'-' * 7}:| {'-' * 9}:| {'-' * 15}:|")
    for (route, store), runs in results.items():
        mb_s = statistics.median(r.mb_s for r in runs)
        growth = statistics.median(r.growth_mib for r in runs)
        vs_put = f"{mb_s / s3_put:9.1%}" if store == "s3" and s3_put else f"{'':9}"
        print(f"| {route:<13} | {store:<5} | {mb_s:7.1f} | {mb_s / copy:7.1%} | {vs_put} | {growth:11.1f} MiB |")
    worst = max((r.growth_mib for runs in results.values() for r in runs), default=0.0)
    verdict = "within" if worst <= 64 else "over"
    print(f"\nlargest RSS growth of any round: {worst:.1f} MiB ({verdict} the 64 MiB goal)")


if __name__ == "__main__":
    sys.exit(main())

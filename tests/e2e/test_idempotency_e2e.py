"""`Idempotency-Key` on a live `tunewright serve`, driven by the real openai SDK and its own retries.

A small TCP proxy in front of the server forwards a request and drops its answer once the server has sent it (the
server did the work, the client never heard): the SDK retries, and with a key the retry gets the first answer
instead of making a second file or job. Concurrent requests with one key make one object, through one API process
or two sharing one PostgreSQL database, and a claim left by a process that died lapses so that a retry does the
work. On SQLite + local files and on PostgreSQL + S3.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import psycopg
import pytest
from fixtures.server import first_key, server_env, start_serve, stop_server

from tunewright.api.idempotency import REPLAYED_HEADER

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASE = "smollm2-135m-instruct"
TRAIN = (ASSETS / "valid_chat.jsonl").read_bytes()
BIG = TRAIN * 1200  # about 3 MB: an upload long enough for concurrent ones to overlap
LEASE_S = 2


def new_key() -> str:
    return f"e2e-{uuid.uuid4()}"


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


class DroppingProxy:
    """A TCP proxy on loopback that sends each connection to the next upstream in turn.

    Armed (`arm()`), it drops the next answer: it forwards the request, waits for the server's first bytes of
    answer (the server has done the work), and closes both connections instead of passing them on.
    """

    def __init__(self, *upstream_urls: str) -> None:
        self.upstreams = itertools.cycle([url.removeprefix("http://").split(":") for url in upstream_urls])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.armed = 0
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        with self.lock:
            self.armed += 1

    def _take_drop(self) -> bool:
        with self.lock:
            if not self.armed:
                return False
            self.armed -= 1
            self.dropped += 1
            return True

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                with self.lock:
                    host, port = next(self.upstreams)
                upstream = socket.create_connection((host, int(port)))
                threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers and self._take_drop():
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(live_server) -> Iterator[DroppingProxy]:
    started = DroppingProxy(live_server.url)
    yield started
    started.close()


def sdk(base_url: str, key: str, *, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=max_retries, timeout=60)


def test_a_file_and_a_job_retried_by_the_sdk_after_a_dropped_answer_are_made_once(live_server, proxy):
    through_proxy = sdk(proxy.url + "/v1", live_server.key, max_retries=2)
    direct = sdk(live_server.base_url, live_server.key)

    proxy.arm()
    key = new_key()
    uploaded = through_proxy.files.with_raw_response.create(
        file=("train.jsonl", TRAIN), purpose="fine-tune", extra_headers=keyed(key)
    )
    assert proxy.dropped == 1
    assert uploaded.retries_taken == 1
    assert uploaded.headers[REPLAYED_HEADER] == "true"
    file = uploaded.parse()
    assert [f.id for f in direct.files.list()] == [file.id]

    # The SDK's own key: it draws one per call and sends it on every attempt once the client names the header.
    through_proxy._idempotency_header = "Idempotency-Key"
    proxy.arm()
    created = through_proxy.fine_tuning.jobs.with_raw_response.create(model=BASE, training_file=file.id)
    assert proxy.dropped == 2
    assert created.retries_taken == 1
    assert created.headers[REPLAYED_HEADER] == "true"
    assert [job.id for job in direct.fine_tuning.jobs.list()] == [created.parse().id]


def test_without_a_key_the_sdks_retry_after_a_dropped_answer_makes_a_second_file(live_server, proxy):
    """What the keys are for: the same dropped answer without one."""
    through_proxy = sdk(proxy.url + "/v1", live_server.key, max_retries=2)
    proxy.arm()
    through_proxy.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    assert proxy.dropped == 1
    assert len(sdk(live_server.base_url, live_server.key).files.list().data) == 2


def race(calls: list[Any]) -> list[Any]:
    """Run the calls at once (a barrier lines them up); their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Any) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def assert_one_did_the_work(responses: list[Any]) -> str:
    """Every answer names one object, and all but one are replays; that object's id."""
    ids = {response.parse().id for response in responses}
    assert len(ids) == 1, ids
    replayed = sorted(str(response.headers.get(REPLAYED_HEADER)) for response in responses)
    assert replayed == ["None"] + ["true"] * (len(responses) - 1)
    return ids.pop()


def test_concurrent_requests_with_one_key_make_one_file_and_one_job(live_server):
    client = sdk(live_server.base_url, live_server.key)
    key = keyed(new_key())

    def upload() -> Any:
        return client.files.with_raw_response.create(file=("big.jsonl", BIG), purpose="fine-tune", extra_headers=key)

    file_id = assert_one_did_the_work(race([upload] * 3))
    assert [f.id for f in client.files.list()] == [file_id]
    job_key = keyed(new_key())

    def create() -> Any:
        return client.fine_tuning.jobs.with_raw_response.create(
            model=BASE, training_file=file_id, extra_headers=job_key
        )

    job_id = assert_one_did_the_work(race([create] * 3))
    assert [job.id for job in client.fine_tuning.jobs.list()] == [job_id]


def test_a_key_reused_with_another_body_is_409_and_another_projects_key_is_its_own(live_server):
    a = sdk(live_server.base_url, live_server.key, max_retries=2)
    b = sdk(live_server.base_url, live_server.new_key("globex", "research"), max_retries=2)
    key = keyed(new_key())
    file = a.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune", extra_headers=key)
    with pytest.raises(openai.ConflictError) as err:  # the SDK would retry a 409, but not this one
        a.files.create(file=("other.jsonl", TRAIN), purpose="fine-tune", extra_headers=key)
    assert err.value.code == "idempotency_key_reused"
    assert err.value.param == "Idempotency-Key"
    assert err.value.response.headers["x-should-retry"] == "false"
    assert err.value.response.headers.get("x-stainless-retry-count") is None
    assert err.value.request.headers["x-stainless-retry-count"] == "0"
    other = b.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune", extra_headers=key)
    assert other.id != file.id
    assert [f.id for f in a.files.list()] == [file.id]
    assert [f.id for f in b.files.list()] == [other.id]


def test_a_refusal_given_before_the_body_arrived_is_not_kept(live_server):
    client = sdk(live_server.base_url, live_server.key)
    key = keyed(new_key())
    bad = (ASSETS / "bad_json_line14.jsonl").read_bytes() + BIG  # refused at line 14, long before its end
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("t.jsonl", bad), purpose="fine-tune", extra_headers=key)
    assert "line 14" in err.value.message
    fixed = client.files.with_raw_response.create(file=("t.jsonl", TRAIN), purpose="fine-tune", extra_headers=key)
    assert REPLAYED_HEADER not in fixed.headers
    assert fixed.parse().status == "processed"


# --- two API processes on one PostgreSQL database (and one S3 bucket)


class Api:
    def __init__(self, url: str, process: Any) -> None:
        self.url = url
        self.process = process

    def kill(self) -> None:
        """SIGKILL the process and what it started, as a machine that dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def two_apis(tmp_path, postgres_url, s3_bucket) -> Iterator[tuple[Api, Api, str]]:
    """Two `tunewright serve --trainers 0`, each with its own data dir; the key the first printed."""
    endpoint, bucket = s3_bucket
    shared = {
        "TUNEWRIGHT_DATABASE_URL": postgres_url,
        "TUNEWRIGHT_BLOB_URL": f"s3://{bucket}/tunewright",
        "TUNEWRIGHT_S3_ENDPOINT_URL": endpoint,
        "TUNEWRIGHT_IDEMPOTENCY_LEASE_S": str(LEASE_S),
    }
    apis: list[Api] = []
    try:
        for name in ("api1", "api2"):
            env = server_env(tmp_path / name, shared)
            (tmp_path / name).mkdir()
            url, process = start_serve(env, tmp_path / name / "serve.log", "--trainers", "0", own_session=True)
            apis.append(Api(url, process))
        yield apis[0], apis[1], first_key(tmp_path / "api1" / "serve.log")
    finally:
        for api in apis:
            stop_server(api.process)


@pytest.mark.postgres
@pytest.mark.s3
def test_two_api_processes_on_one_database_answer_one_key_once(two_apis):
    api1, api2, key = two_apis
    clients = [sdk(api.url + "/v1", key) for api in (api1, api2)]
    file_id = clients[0].files.create(file=("train.jsonl", TRAIN), purpose="fine-tune").id

    # At once through both processes.
    headers = keyed(new_key())
    job_id = assert_one_did_the_work(
        race(
            [
                lambda client=client: client.fine_tuning.jobs.with_raw_response.create(
                    model=BASE, training_file=file_id, extra_headers=headers
                )
                for client in clients * 2
            ]
        )
    )
    assert [job.id for job in clients[1].fine_tuning.jobs.list()] == [job_id]

    # A dropped answer from one process, retried by the SDK through the other (a proxy that alternates).
    proxy = DroppingProxy(api1.url, api2.url)
    try:
        proxy.arm()
        retried = sdk(proxy.url + "/v1", key, max_retries=2).fine_tuning.jobs.with_raw_response.create(
            model=BASE, training_file=file_id, suffix="retried", extra_headers=keyed(new_key())
        )
    finally:
        proxy.close()
    assert proxy.dropped == 1
    assert retried.headers[REPLAYED_HEADER] == "true"
    assert len(clients[0].fine_tuning.jobs.list().data) == 2


def claim_holder(database_url: str, key: str) -> str | None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT token FROM idempotency_keys WHERE idempotency_key = %s", (key,)).fetchone()
    return None if row is None else row[0]


@pytest.mark.postgres
@pytest.mark.s3
def test_the_claim_of_a_process_that_died_lapses_and_a_retry_through_another_does_the_work(two_apis, postgres_url):
    api1, api2, api_key = two_apis
    key = new_key()
    boundary = "b" * 32
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + TRAIN + f"\r\n--{boundary}--\r\n".encode()
    host, port = api1.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            (
                f"POST /v1/files HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {api_key}\r\n"
                f"Idempotency-Key: {key}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body[: len(head) + 100]  # the upload is under way when its process dies
        )
        deadline = time.monotonic() + 30
        while claim_holder(postgres_url, key) is None:
            assert time.monotonic() < deadline, "the first request never claimed its key"
            time.sleep(0.05)
        api1.kill()
    # The retry waits for the claim to lapse (the lease is LEASE_S), takes it over and stores the file.
    client = sdk(api2.url + "/v1", api_key)

    def upload() -> Any:
        return client.files.with_raw_response.create(
            file=("t.jsonl", TRAIN), purpose="fine-tune", extra_headers=keyed(key)
        )

    stored = upload()
    assert REPLAYED_HEADER not in stored.headers
    assert [f.id for f in client.files.list()] == [stored.parse().id]
    again = upload()
    assert again.headers[REPLAYED_HEADER] == "true"
    assert again.parse().id == stored.parse().id

"""The API and the worker across database outages: a PostgreSQL restart and a stop on a private cluster, and a
SQLite database locked under a worker.

The PostgreSQL tests run on a cluster of their own (`fixtures.pg_cluster`), never on the shared server. Nothing
here measures time: a request that waited for the pool while the server is down would wait the pool timeout,
set to an hour here, and the test would time out instead of seeing its 503.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import psycopg
import pytest
from fixtures.app import BASE_URL, make_settings, make_tenant
from fixtures.training import TINY, TRAINING_SETTINGS, metrics_events
from litestar.testing import TestClient

from tunewright.api.app import create_app
from tunewright.storage.base import Stores
from tunewright.storage.db import PostgresDatabase, SQLiteDatabase
from tunewright.storage.metadata import SQLMetadataStore
from tunewright.storage.queue import SQLJobQueue
from tunewright.storage.registry import open_blob_store
from tunewright.trainer.backends.peft import PeftTrainingBackend
from tunewright.trainer.worker import Worker

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fixtures.pg_cluster import PrivateCluster

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WAIT_S = 120.0


def stores_over(settings: Any, database: Any) -> Stores:
    return Stores(blobs=open_blob_store(settings), metadata=SQLMetadataStore(database), queue=SQLJobQueue(database))


@pytest.fixture(scope="module")
def outage_database(pg_cluster: PrivateCluster) -> str:
    url = pg_cluster.create_database("outage")
    database = PostgresDatabase(url, pool_size=1)
    try:
        SQLMetadataStore(database).migrate()
    finally:
        database.close()
    return url


@pytest.fixture
def pg_api(tmp_path: Path, outage_database: str) -> Iterator[tuple[TestClient[Any], Stores, str]]:
    """The API over the private cluster (pool of 4, pool timeout of an hour), a tenant key."""
    settings = make_settings(tmp_path, database_url=outage_database)
    database = PostgresDatabase(outage_database, pool_size=4, timeout_s=3600)
    stores = stores_over(settings, database)
    tenant = make_tenant(stores, f"t{time.monotonic_ns()}")
    with TestClient(create_app(settings, stores, sweep=False), base_url="http://testserver.local") as http:
        yield http, stores, tenant.key
    stores.close()


def fill_pool(database: PostgresDatabase, count: int) -> None:
    """Open `count` pooled connections at once, so that the pool holds that many idle ones afterwards."""
    held = [database.reading() for _ in range(count)]
    for context in held:
        context.__enter__().execute("SELECT 1")
    for context in held:
        context.__exit__(None, None, None)


@pytest.mark.postgres
def test_requests_after_a_postgres_restart_get_fresh_connections(pg_api, pg_cluster):
    http, stores, key = pg_api
    headers = {"Authorization": f"Bearer {key}"}
    fill_pool(stores.metadata.database, 4)
    pg_cluster.restart()  # every pooled connection is now closed by the server
    statuses = [http.get("/v1/fine_tuning/jobs", headers=headers).status_code for _ in range(8)]
    assert statuses == [200] * 8
    assert http.get("/healthz").json() == {"status": "ok"}

    # Connections the server drops while they sit idle (an idle timeout, an operator) are replaced too.
    fill_pool(stores.metadata.database, 4)
    with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = 'outage' AND pid <> pg_backend_pid()"
        )
        # pg_terminate_backend only signals: wait until the backends are gone, as idle connections dropped by
        # a timeout are long before their next use (a query racing the kill itself may still get its 503).
        deadline = time.monotonic() + 30
        while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'outage'").fetchone()[0]:
            assert time.monotonic() < deadline, "the terminated backends did not exit"
            time.sleep(0.02)
    statuses = [http.get("/v1/fine_tuning/jobs", headers=headers).status_code for _ in range(8)]
    assert statuses == [200] * 8


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_while_postgres_is_down_requests_fail_at_once_with_the_envelope_and_recover(pg_api, pg_cluster):
    http, _, key = pg_api
    client = openai.OpenAI(base_url=BASE_URL, api_key=key, http_client=http, max_retries=0)
    assert client.fine_tuning.jobs.list().data == []
    pg_cluster.stop()
    try:
        for _ in range(3):  # with a pool timeout of an hour, each would hang without the outage breaker
            with pytest.raises(openai.InternalServerError) as raised:
                client.fine_tuning.jobs.list()
            assert raised.value.status_code == 503
            assert raised.value.body == {
                "message": "The database is unavailable; try again shortly.",
                "type": "server_error",
                "param": None,
                "code": "service_unavailable",
            }
        health = http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["problems"] == ["database: PostgreSQL is unreachable: Connection refused"]
    finally:
        pg_cluster.start()
    deadline = time.monotonic() + WAIT_S
    while http.get("/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {key}"}).status_code != 200:
        assert time.monotonic() < deadline, "the API did not recover once PostgreSQL was back"
        time.sleep(0.1)


# --- a worker under a locked SQLite database ---------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, tiny_dir: Path) -> Any:
    return make_settings(tmp_path, base_models={TINY: str(tiny_dir)}, **TRAINING_SETTINGS)


class LockedDatabase:
    """Holds SQLite's write lock from another connection, as a long writer or a stuck disk would."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def __enter__(self) -> LockedDatabase:
        self.conn.execute("BEGIN EXCLUSIVE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("ROLLBACK")


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, errors: list[Exception], count: int = 1) -> None:
    deadline = time.monotonic() + WAIT_S
    while sum(text in record.getMessage() for record in caplog.records) < count:
        assert not errors, errors
        assert time.monotonic() < deadline, f"no log line {text!r}"
        time.sleep(0.02)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_worker_waits_out_a_locked_sqlite_database_before_and_during_a_job(
    client_a, stores, settings, tenants, caplog
):
    path = settings.database_url[len("sqlite:///") :]
    worker_stores = stores_over(settings, SQLiteDatabase(path, busy_timeout_s=0.1))
    worker = Worker(settings, worker_stores, PeftTrainingBackend(), device="cpu")
    errors: list[Exception] = []

    def run() -> None:
        try:
            worker.run(max_jobs=1)
        except Exception as exc:  # noqa: BLE001 - the test reports whatever ended the worker
            errors.append(exc)

    training = client_a.files.create(file=("t.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune")
    job = client_a.fine_tuning.jobs.create(
        model=TINY,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 2}}},
    )
    thread = threading.Thread(target=run, daemon=True)
    with LockedDatabase(path):  # the claim cannot write
        thread.start()
        wait_for_log(caplog, "database unavailable in claim", errors)
    project = tenants["a"].project_id
    deadline = time.monotonic() + WAIT_S
    while len(metrics_events(stores, job.id, project)) < 2:
        assert not errors, errors
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with LockedDatabase(path):  # a step's bookkeeping cannot write
        wait_for_log(caplog, "database unavailable in ", errors, count=2)
    thread.join(WAIT_S)
    assert not errors, errors
    assert client_a.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    assert sum("database answers again" in record.getMessage() for record in caplog.records) == 2
    worker_stores.close()

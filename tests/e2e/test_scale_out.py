"""Scale-out: API replicas, training workers and inference nodes on one PostgreSQL and one S3 bucket.

Every process is a real `tunewright` command with a data dir of its own, as on separate machines; they share
only a scratch database that starts empty (no schema) and a bucket on the moto server over HTTP:

- `api1`, `api2`, `api3`: `tunewright serve --trainers 0`, all started at once on the empty database (they race to
  migrate it and to make the first tenant). `api1` generates with the default, in-process engine; `api2` and
  `api3` with the remote engine over two inference nodes.
- `worker1`, `worker2`: `tunewright worker`; `node1`, `node2`: `tunewright inference`, started at the same time.

Two tenants queue identical jobs through different API processes (three for `acme` through `api1`, then one for
`globex` through `api2`); the worker training the first is killed with SIGKILL after a resume point. The module
fixture `trained` runs that once; the tests read what it left, through every API process. Leases, heartbeats and
polls are short (a killed worker's job is reclaimed 3 s after its last heartbeat), jobs are 24 steps of the tiny
model. Every wait is for a state, an event or a log line, never for wall time.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import openai
import psycopg
import pytest
from fixtures.app import make_tenant
from fixtures.chat import no_eos
from fixtures.models import share_smollm2
from fixtures.postgres import empty_database
from fixtures.s3 import scratch_bucket
from fixtures.server import FIRST_START, VENV_BIN, first_key, free_port, server_env, start_serve, stop_server
from fixtures.training import TINY, metrics_events, wait_for_metrics, wait_for_status

from tunewright.inference.adapters import folder_name
from tunewright.storage.registry import open_stores
from tunewright.storage.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fixtures.app import Tenant

    from tunewright.storage.base import Stores

pytestmark = [
    pytest.mark.scaleout,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.s3,
]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
NODE_TOKEN = "scale-out-node-token"
HYPER = {"n_epochs": 2, "batch_size": 1}  # 12 examples: 12 steps an epoch, 24 in all
TOTAL_STEPS = 24
HELLO = [{"role": "user", "content": "Say hello."}]
WORKER_SETTINGS = {
    "TUNEWRIGHT_LOG_LEVEL": "INFO",  # the worker logs each job's outcome
    "TUNEWRIGHT_LEASE_S": "3",
    "TUNEWRIGHT_HEARTBEAT_S": "1",
    "TUNEWRIGHT_RESUME_EVERY_STEPS": "4",
    "TUNEWRIGHT_WORKER_POLL_S": "0.2",
    # Above what the test queues per project: the order of claims is the queue's round-robin, not the cap.
    "TUNEWRIGHT_MAX_RUNNING_JOBS_PER_PROJECT": "4",
}


class Process(msgspec.Struct, kw_only=True):
    """One started command: its name, URL (none for a worker), process and log."""

    name: str
    url: str | None
    process: Any
    log: Path


class Cluster(msgspec.Struct, kw_only=True):
    """The running processes, and stores opened in the test's process on the same database and bucket."""

    apis: dict[str, Process]
    workers: dict[str, Process]
    nodes: dict[str, Process]
    database_url: str
    stores: Any


class Trained(msgspec.Struct, kw_only=True):
    """What the training scenario left: the tenants, their jobs in the order queued, who was killed."""

    a: Any
    b: Any
    jobs: dict[str, str]  # a1, a2, a3 (acme, through api1), b1 (globex, through api2) → job id
    killed_job: str
    survivor: str  # the worker that was not killed


def sdk(url: str, key: str, *, max_retries: int = 0) -> openai.OpenAI:
    """The stock openai SDK on a live API process."""
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=max_retries, timeout=120)


def start_worker(tmp_path: Path, name: str, shared: dict[str, str], smollm2_import: Path | None) -> Process:
    """`tunewright worker` on its own data dir (with the session's SmolLM2 import, so it has none to do)."""
    env = {**server_env(tmp_path / name, shared), **WORKER_SETTINGS}
    share_smollm2(tmp_path / name / "data", smollm2_import)
    log = tmp_path / name / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(  # a fixed command: this venv's `tunewright worker`
            [str(VENV_BIN / "tunewright"), "worker"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return Process(name=name, url=None, process=process, log=log)


def start_api(
    tmp_path: Path, name: str, env: dict[str, str], *, command: str = "serve", port: int | None = None
) -> Process:
    """`tunewright serve --trainers 0` (or `inference`) on its own data dir; returns once /healthz answers."""
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    log = tmp_path / name / f"{command}.log"
    args = ("--trainers", "0") if command == "serve" else ()
    url, process = start_serve(env, log, *args, command=command, own_session=True, port=port)
    return Process(name=name, url=url, process=process, log=log)


def stop_all(processes: list[Process]) -> None:
    """SIGTERM every process at once, then wait for each (SIGKILL one that lingers)."""
    for started in processes:
        if started.process.poll() is None:
            started.process.terminate()
    for started in processes:
        stop_server(started.process)
        if started.url is not None:  # its own process group: what it started, should it have left any
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: str,
    s3_endpoint: str,
    s3_admin: Any,
    tiny_dir: Path,
    smollm2_import: Path | None,
) -> Iterator[Cluster]:
    """Start every process of the module at once on an empty database and a fresh bucket."""
    tmp_path = tmp_path_factory.mktemp("scale-out")
    with empty_database(postgres_server) as database_url, scratch_bucket(s3_admin) as bucket:
        shared = {
            "TUNEWRIGHT_DATABASE_URL": database_url,
            "TUNEWRIGHT_BLOB_URL": f"s3://{bucket}/tunewright",
            "TUNEWRIGHT_S3_ENDPOINT_URL": s3_endpoint,
            "TUNEWRIGHT_BASE_MODELS": f"{TINY}={tiny_dir}",
            "TUNEWRIGHT_TORCH_THREADS": "1",
        }
        node_env = {
            **shared,
            "TUNEWRIGHT_DATABASE_URL": "postgresql://nowhere.invalid:1/none",  # a node never opens one
            "TUNEWRIGHT_INFERENCE_TOKEN": NODE_TOKEN,
        }
        node_ports = [free_port(), free_port()]
        remote = {
            **shared,
            "TUNEWRIGHT_INFERENCE_ENGINE": "remote",
            "TUNEWRIGHT_INFERENCE_URLS": ",".join(f"http://127.0.0.1:{port}" for port in node_ports),
            "TUNEWRIGHT_INFERENCE_TOKEN": NODE_TOKEN,
        }
        listening = [
            *[(f"node{k}", node_env, "inference", port) for k, port in zip((1, 2), node_ports, strict=True)],
            ("api1", shared, "serve", None),
            *[(f"api{k}", remote, "serve", None) for k in (2, 3)],
        ]
        started = [start_worker(tmp_path, f"worker{k}", shared, smollm2_import) for k in (1, 2)]
        try:
            with ThreadPoolExecutor(max_workers=len(listening)) as pool:
                futures = [
                    pool.submit(start_api, tmp_path, name, server_env(tmp_path / name, env), command=cmd, port=port)
                    for name, env, cmd, port in listening
                ]
            started.extend(future.result() for future in futures if future.exception() is None)
            for future in futures:
                future.result()  # the first failure to start, if any, once everything started is in `started`
            settings = load_settings(
                {},
                data_dir=str(tmp_path / "test"),
                database_url=database_url,
                blob_url=shared["TUNEWRIGHT_BLOB_URL"],
                s3_endpoint_url=s3_endpoint,
            )
            stores = open_stores(settings)
            try:
                yield Cluster(
                    apis={p.name: p for p in started if p.name.startswith("api")},
                    workers={p.name: p for p in started if p.name.startswith("worker")},
                    nodes={p.name: p for p in started if p.name.startswith("node")},
                    database_url=database_url,
                    stores=stores,
                )
            finally:
                stores.close()
        finally:
            stop_all(started)


def create_job(client: openai.OpenAI, training_file: str) -> str:
    method = {"type": "supervised", "supervised": {"hyperparameters": HYPER}}
    return client.fine_tuning.jobs.create(model=TINY, training_file=training_file, method=method, seed=7).id


def lease_holder(database_url: str, job_id: str) -> str:
    """The pid part of the job's `lease_owner` (`host:pid:random`)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT lease_owner FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None and row[0], f"{job_id} is held by no worker"
    return row[0].split(":")[1]


@pytest.fixture(scope="module")
def trained(cluster: Cluster) -> Trained:
    """Queue the jobs through two API processes, kill the worker of the first mid-training, wait for all to end."""
    stores: Stores = cluster.stores
    a, b = make_tenant(stores, "acme"), make_tenant(stores, "globex")
    with ThreadPoolExecutor(max_workers=5) as warming:  # load the base model where the tests will generate
        warm = [warming.submit(chat, api.url, a.key, TINY, None) for api in cluster.apis.values()]
        warm.extend(warming.submit(node_complete, node) for node in cluster.nodes.values())
        trained = queue_and_kill(cluster, a, b)
    for future in warm:
        future.result()
    return trained


def queue_and_kill(cluster: Cluster, a: Tenant, b: Tenant) -> Trained:
    """Queue acme's three jobs through api1, then globex's through api2; kill the first one's worker mid-training."""
    stores: Stores = cluster.stores
    api1, api2 = cluster.apis["api1"].url, cluster.apis["api2"].url
    data = (ASSETS / "valid_chat.jsonl").read_bytes()
    client_a, client_b = sdk(api1, a.key), sdk(api2, b.key)
    file_a = client_a.files.create(file=("train.jsonl", data), purpose="fine-tune").id
    file_b = client_b.files.create(file=("train.jsonl", data), purpose="fine-tune").id
    jobs = {name: create_job(client_a, file_a) for name in ("a1", "a2", "a3")}
    jobs["b1"] = create_job(client_b, file_b)

    # The first job is the first claimed, whatever the workers' start: kill its worker after its resume point at
    # step 4 (written before step 5's event), with 19 steps still to go.
    wait_for_metrics(stores, jobs["a1"], a.project_id, 5)
    pid = lease_holder(cluster.database_url, jobs["a1"])
    (killed,) = [w for w in cluster.workers.values() if str(w.process.pid) == pid]
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait()
    assert client_a.fine_tuning.jobs.retrieve(jobs["a1"]).status == "running", "the job ended before the kill"
    for name, job_id in jobs.items():
        client = client_a if name.startswith("a") else client_b
        wait_for_status(client, job_id, {"succeeded", "failed", "cancelled"})
    (survivor,) = [w.name for w in cluster.workers.values() if w is not killed]
    return Trained(a=a, b=b, jobs=jobs, killed_job=jobs["a1"], survivor=survivor)


def messages(client: openai.OpenAI, job_id: str) -> list[str]:
    """The job's event messages, oldest first."""
    return [event.message for event in reversed(client.fine_tuning.jobs.list_events(job_id, limit=100).data)]


def started_event(client: openai.OpenAI, job_id: str) -> str:
    """The id of the job's first event written by a worker (ids are time-ordered to the millisecond)."""
    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    (event,) = [event for event in events if event.message.startswith("Validating training file")]
    return event.id.removeprefix("ftevent-")


# ----------------------------------------------------------------------------------------------- tests


def test_replicas_starting_together_on_an_empty_database_make_one_default_tenant(cluster: Cluster) -> None:
    logs = {name: api.log.read_text() for name, api in cluster.apis.items()}
    assert sum(log.count(FIRST_START) for log in logs.values()) == 1, logs
    with psycopg.connect(cluster.database_url, autocommit=True) as conn:
        (org_id,) = conn.execute("SELECT id FROM organizations WHERE slug = 'default'").fetchone()
        projects = conn.execute("SELECT id FROM projects WHERE organization_id = %s", (org_id,)).fetchall()
        keys = conn.execute("SELECT project_id FROM api_keys WHERE organization_id = %s", (org_id,)).fetchall()
    assert len(projects) == 1
    assert keys == projects
    (printed,) = [api.log for name, api in cluster.apis.items() if FIRST_START in logs[name]]
    key = first_key(printed)
    for api in cluster.apis.values():  # the one key works on every replica
        assert TINY in {model.id for model in sdk(api.url, key).models.list().data}


def test_every_job_succeeds_exactly_once_and_the_killed_workers_job_resumes_on_the_other(
    cluster: Cluster, trained: Trained
) -> None:
    api1 = cluster.apis["api1"].url
    clients = {"a": sdk(api1, trained.a.key), "b": sdk(api1, trained.b.key)}
    outcomes = {name: worker.log.read_text() for name, worker in cluster.workers.items()}
    for name, job_id in trained.jobs.items():
        client = clients[name[0]]
        job = client.fine_tuning.jobs.retrieve(job_id)
        assert job.status == "succeeded", job.error
        said = messages(client, job_id)
        assert said.count("The job has successfully completed") == 1
        done_by = [worker for worker, log in outcomes.items() for _ in range(log.count(f"job {job_id}: succeeded"))]
        assert len(done_by) == 1, done_by
        if job_id == trained.killed_job:
            assert done_by == [trained.survivor]
        resumed = [m for m in said if m.startswith("Resumed from step ")]
        if job_id == trained.killed_job:
            (line,) = resumed
            step = int(re.fullmatch(r"Resumed from step (\d+)/24", line).group(1))  # type: ignore[union-attr]
            assert step % 4 == 0 and 4 <= step < TOTAL_STEPS
            assert said.count("Fine-tuning job started") == 1
        else:
            assert resumed == []
    for prefix, client in clients.items():  # one model per job
        made = sorted(
            client.fine_tuning.jobs.retrieve(j).fine_tuned_model for n, j in trained.jobs.items() if n[0] == prefix
        )
        assert sorted(m.id for m in client.models.list().data if m.id.startswith("ft:")) == made


def test_identical_jobs_bill_identical_trained_tokens_each_step_once(cluster: Cluster, trained: Trained) -> None:
    stores: Stores = cluster.stores
    tokens = set()
    for name, job_id in trained.jobs.items():
        tenant = trained.a if name[0] == "a" else trained.b
        job = sdk(cluster.apis["api2"].url, tenant.key).fine_tuning.jobs.retrieve(job_id)
        usage = stores.metadata.list_training_usage(job_id, project_id=tenant.project_id)
        assert [row.step for row in usage] == list(range(1, TOTAL_STEPS + 1))
        assert job.trained_tokens == sum(row.trained_tokens for row in usage)
        tokens.add(job.trained_tokens)
    (billed,) = tokens
    assert billed > 0
    # The killed job's replayed steps were trained twice and billed once: its metrics events say so.
    replayed = [e.data["step"] for e in metrics_events(stores, trained.killed_job, trained.a.project_id)]
    assert len(replayed) > TOTAL_STEPS and sorted(set(replayed)) == list(range(1, TOTAL_STEPS + 1))


def snapshot(url: str, tenant: Tenant, job_ids: list[str]) -> dict[str, Any]:
    """What a tenant sees through one API process: jobs, events, checkpoints, models and files."""
    client = sdk(url, tenant.key)
    jobs = client.fine_tuning.jobs
    return {
        "jobs": jobs.list(limit=100).model_dump(),
        "each": [jobs.retrieve(job_id).model_dump() for job_id in job_ids],
        "events": [jobs.list_events(job_id, limit=100).model_dump() for job_id in job_ids],
        "checkpoints": [jobs.checkpoints.list(job_id, limit=100).model_dump() for job_id in job_ids],
        "models": client.models.list().model_dump(),
        "files": client.files.list().model_dump(),
    }


def test_every_api_process_shows_the_same_state(cluster: Cluster, trained: Trained) -> None:
    for tenant, prefix in ((trained.a, "a"), (trained.b, "b")):
        job_ids = [job_id for name, job_id in trained.jobs.items() if name[0] == prefix]
        views = {name: snapshot(api.url, tenant, job_ids) for name, api in cluster.apis.items()}
        reference = views.pop("api1")
        assert len(reference["jobs"]["data"]) == len(job_ids)
        for name, view in views.items():
            assert view == reference, name


def test_a_tenant_queued_second_is_served_before_the_first_tenants_third_job(
    cluster: Cluster, trained: Trained
) -> None:
    client_a, client_b = (sdk(cluster.apis["api2"].url, t.key) for t in (trained.a, trained.b))
    a_jobs = [client_a.fine_tuning.jobs.retrieve(trained.jobs[n]) for n in ("a1", "a2", "a3")]
    b1 = client_b.fine_tuning.jobs.retrieve(trained.jobs["b1"])
    assert max(job.created_at for job in a_jobs) <= b1.created_at  # acme queued all three first
    assert started_event(client_b, b1.id) < started_event(client_a, a_jobs[2].id)


def chat(url: str, key: str, model: str, tokenizer: Any, *, max_retries: int = 0) -> str:
    """One greedy chat completion of eight tokens through the SDK (end of text banned, given the tokenizer)."""
    bias = no_eos(tokenizer) if tokenizer is not None else None
    reply = sdk(url, key, max_retries=max_retries).chat.completions.create(
        model=model, messages=HELLO, temperature=0, max_tokens=8, logit_bias=bias
    )
    assert reply.model == model
    return reply.choices[0].message.content


def node_complete(node: Process) -> None:
    """One base-model completion straight from a node (its first loads the model)."""
    body = {"model": TINY, "prompt": [1, 2, 3], "max_tokens": 1}
    headers = {"Authorization": f"Bearer {NODE_TOKEN}"}
    assert httpx.post(f"{node.url}/v1/completions", json=body, headers=headers, timeout=120).status_code == 200


def model_of(cluster: Cluster, tenant: Tenant, job_id: str) -> str:
    return sdk(cluster.apis["api1"].url, tenant.key).fine_tuning.jobs.retrieve(job_id).fine_tuned_model


def test_a_model_trained_through_one_api_process_answers_through_the_other(
    cluster: Cluster, trained: Trained, tokenizer: Any
) -> None:
    """globex queued through api2; api1's in-process engine fetches the adapter from the bucket into its own cache."""
    api1 = cluster.apis["api1"]
    model = model_of(cluster, trained.b, trained.jobs["b1"])
    cached = api1.log.parent / "data" / "adapter-cache" / folder_name(model) / "adapter_model.safetensors"
    assert not cached.exists()
    assert chat(api1.url, trained.b.key, model, tokenizer)
    assert cached.is_file()
    with pytest.raises(openai.NotFoundError):  # and another tenant's model stays out of reach
        chat(api1.url, trained.a.key, model, tokenizer)


def node_adapters(node: Process) -> set[str]:
    """The adapters a node holds (its `/v1/models` cards with a parent)."""
    cards = httpx.get(f"{node.url}/v1/models", headers={"Authorization": f"Bearer {NODE_TOKEN}"}, timeout=30)
    return {card["id"] for card in cards.json()["data"] if card["parent"] is not None}


def test_remote_replicas_route_an_adapter_to_one_node_and_move_it_when_that_node_dies(
    cluster: Cluster, trained: Trained, tokenizer: Any
) -> None:
    """acme queued through api1; api2 and api3 send its model to one node, which loads it from the bucket."""
    api1, api2, api3 = (cluster.apis[name].url for name in ("api1", "api2", "api3"))
    model = model_of(cluster, trained.a, trained.jobs["a3"])
    local = chat(api1, trained.a.key, model, tokenizer)  # the in-process engine's answer, for reference
    assert chat(api2, trained.a.key, model, tokenizer) == local
    assert chat(api3, trained.a.key, model, tokenizer) == local
    holders = [node for node in cluster.nodes.values() if model in node_adapters(node)]
    assert len(holders) == 1, "both replicas send an adapter to the same node"
    (holder,) = holders
    (other,) = [node for node in cluster.nodes.values() if node is not holder]
    assert chat(api2, trained.a.key, model, tokenizer) == local
    assert model not in node_adapters(other)  # it stays where it is

    os.killpg(holder.process.pid, signal.SIGKILL)  # the node and its granian worker, as if its machine died
    holder.process.wait()
    # Within one retry (the SDK's), each replica's next request for the adapter is answered by the other node.
    assert chat(api2, trained.a.key, model, tokenizer, max_retries=1) == local
    assert chat(api3, trained.a.key, model, tokenizer, max_retries=1) == local
    assert model in node_adapters(other)

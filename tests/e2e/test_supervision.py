"""End to end: `tunewright serve` keeps its embedded trainer alive through a PostgreSQL restart and a kill -9.

`serve` runs on a private PostgreSQL cluster that the test starts itself (never the shared server) with local
blobs and one embedded trainer. PostgreSQL stops while a job trains: the trainer waits the outage out (it does not
exit, and /healthz says the database is down) and the job goes on once the server is back. Then the trainer is
killed with SIGKILL while a second job waits: `serve` starts another one, which resumes the first job once its
lease expires. Both jobs succeed; /healthz and /metrics count the restart; stopping `serve` leaves no trainer
behind. Every wait is for an event, a log line or a status, never for wall time.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
from fixtures.models import share_smollm2
from fixtures.server import start_server, stop_server
from fixtures.training import TINY

if TYPE_CHECKING:
    from fixtures.pg_cluster import PrivateCluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WAIT_S = 300.0
WORKER_ARGV = ("tunewright.clients.cli.main", "worker")


def children(pid: int) -> dict[int, list[str]]:
    """The live child processes of `pid` and their command lines, read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue  # exited meanwhile
        state, parent = stat.rpartition(")")[2].split()[:2]
        if int(parent) == pid and state != "Z":
            found[int(entry.name)] = argv
    return found


def trainer_pids(serve_pid: int) -> list[int]:
    return [pid for pid, argv in children(serve_pid).items() if all(arg in argv for arg in WORKER_ARGV)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


def wait_until(what: str, condition: Any) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def steps(client: openai.OpenAI, job_id: str) -> int:
    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    return sum(1 for event in events if event.type == "metrics")


def health(url: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(url + "/healthz", timeout=30)
    return response.status_code, response.json()


def create_job(client: openai.OpenAI, training_file: str, epochs: int) -> Any:
    hyper = {"n_epochs": epochs, "batch_size": 2}
    return client.fine_tuning.jobs.create(
        model=TINY, training_file=training_file, method={"type": "supervised", "supervised": {"hyperparameters": hyper}}
    )


def test_the_embedded_trainer_survives_a_postgres_restart_and_a_kill(
    pg_cluster: PrivateCluster, tmp_path: Path, tiny_dir: Path, smollm2_import: Path | None
) -> None:
    share_smollm2(tmp_path / "data", smollm2_import)  # the session's one import: the trainer has none to do
    env = {
        "TUNEWRIGHT_DATABASE_URL": pg_cluster.create_database("serve"),
        "TUNEWRIGHT_TRAINERS": "1",
        "TUNEWRIGHT_BASE_MODELS": f"{TINY}={tiny_dir}",
        "TUNEWRIGHT_TORCH_THREADS": "1",
        "TUNEWRIGHT_WORKER_POLL_S": "0.2",
        "TUNEWRIGHT_LEASE_S": "4",
        "TUNEWRIGHT_HEARTBEAT_S": "1",
        "TUNEWRIGHT_RESUME_EVERY_STEPS": "3",
    }
    server, process = start_server(tmp_path, env)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.key, max_retries=0)
        assert health(server.url) == (200, {"status": "ok", "trainers": {"expected": 1, "running": 1, "restarts": 0}})
        (trainer,) = trainer_pids(process.pid)
        data = (ASSETS / "valid_chat.jsonl").read_bytes()
        training = client.files.create(file=("t.jsonl", data), purpose="fine-tune")
        first = create_job(client, training.id, epochs=5)  # 30 steps
        wait_until("the first job's second step", lambda: steps(client, first.id) >= 2)

        pg_cluster.stop()
        try:
            wait_until("the trainer's outage warning", lambda: "database unavailable in" in server.log.read_text())
            # A probe made while the server was still shutting down gives that reason; the next says refused.
            refused = "database: PostgreSQL is unreachable: Connection refused"
            wait_until("the outage's reason", lambda: health(server.url)[1].get("problems", [None])[0] == refused)
            status, body = health(server.url)
            assert (status, body["status"], body["trainers"]["running"]) == (503, "unavailable", 1)
            assert body["problems"][0] == refused
            assert alive(trainer)
        finally:
            pg_cluster.start()
        wait_until("the API after the restart", lambda: health(server.url)[0] == 200)
        before = steps(client, first.id)
        wait_until("the first job to go on", lambda: steps(client, first.id) >= before + 2)
        second = create_job(client, training.id, epochs=1)
        assert client.fine_tuning.jobs.retrieve(first.id).status == "running"

        os.kill(trainer, signal.SIGKILL)
        wait_until("a new trainer", lambda: trainer_pids(process.pid) not in ([], [trainer]))
        assert not alive(trainer)  # reaped: no zombie left
        assert wait_until("both jobs", lambda: all(finished(client, job.id) for job in (first, second)))
        for job in (first, second):
            done = client.fine_tuning.jobs.retrieve(job.id)
            assert (done.status, done.error) == ("succeeded", None)
        assert health(server.url) == (200, {"status": "ok", "trainers": {"expected": 1, "running": 1, "restarts": 1}})
        assert "tunewright_trainer_restarts_total 1.0" in httpx.get(server.url + "/metrics").text
        (replacement,) = trainer_pids(process.pid)
    finally:
        stop_server(process)
    log = server.log.read_text()
    assert f"trainer 1 (pid {trainer}) was killed by SIGKILL" in log
    assert "it/s]" not in log  # no tqdm progress bars in the server log
    assert not alive(replacement)
    assert list((tmp_path / "data" / "run").glob("serve-*.json")) == []


def finished(client: openai.OpenAI, job_id: str) -> bool:
    status = client.fine_tuning.jobs.retrieve(job_id).status
    assert status not in ("failed", "cancelled"), status
    return status == "succeeded"

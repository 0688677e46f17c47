"""The trainer supervisor of `serve`, over stand-in trainers (small Python processes): restarts with backoff,
exits logged with their code or signal, the status file, and a graceful stop that leaves nothing behind."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tunewright.clients.cli.supervise import TrainerSupervisor, describe_exit
from tunewright.storage.supervision import read_status

WAIT_S = 60.0

# A trainer that records its pid and session, says when it got SIGTERM, and exits 0 on it.
GRACEFUL = """
import os, signal, sys, time
out = sys.argv[1]
def stop(signum, frame):
    with open(out, "a") as fh:
        fh.write(f"stop {os.getpid()}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
with open(out, "a") as fh:
    fh.write(f"start {os.getpid()} {os.getsid(0)}\\n")
while True:
    time.sleep(0.05)
"""


def wait_until(condition):
    deadline = time.monotonic() + WAIT_S
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def started(path: Path) -> list[list[str]]:
    return [line for line in lines(path) if line[0] == "start"]


def test_exits_are_described_by_code_or_signal():
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


def test_a_killed_trainer_is_restarted_and_stop_is_one_sigterm_each(tmp_path, caplog):
    out = tmp_path / "trainers.txt"
    status_file = tmp_path / "run" / "serve.json"
    supervisor = TrainerSupervisor(2, status_file, command=[sys.executable, "-c", GRACEFUL, str(out)])
    with caplog.at_level(logging.INFO, logger="tunewright.serve"):
        supervisor.start()
        try:
            wait_until(lambda: len(started(out)) == 2)
            starts = started(out)
            for _, pid, session in starts:
                assert pid == session  # its own session: a terminal's Ctrl-C does not reach it
            assert wait_until(lambda: read_status(status_file)).running == 2
            victim = int(starts[0][1])
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: len(started(out)) == 3)
            status = wait_until(lambda: (s := read_status(status_file)) and s.restarts == 1 and s.running == 2 and s)
            assert (status.expected, status.running, status.restarts) == (2, 2, 1)
        finally:
            supervisor.stop()
    assert f"trainer 1 (pid {victim}) was killed by SIGKILL" in caplog.text
    live = [int(pid) for _, pid, _ in started(out) if int(pid) != victim]
    stops = [int(line[1]) for line in lines(out) if line[0] == "stop"]
    assert sorted(stops) == sorted(live)  # each remaining trainer got its graceful stop, once
    for pid in live:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped: neither a zombie nor an orphan
    assert not status_file.exists()


def test_a_trainer_that_keeps_failing_is_restarted_later_each_time(tmp_path, caplog):
    supervisor = TrainerSupervisor(1, tmp_path / "serve.json", command=[sys.executable, "-c", "raise SystemExit(3)"])
    with caplog.at_level(logging.WARNING, logger="tunewright.serve"):
        supervisor.start()
        try:
            wait_until(lambda: caplog.text.count("exited with code 3") >= 2)
        finally:
            supervisor.stop()
    delays = [line.rsplit("again in ", 1)[1] for line in caplog.text.splitlines() if "exited with code 3" in line]
    assert delays[:2] == ["1 s", "2 s"]


def test_start_returns_with_the_trainers_started_before_anything_else_forks(tmp_path):
    """`serve` starts the trainers just before granian forks its workers. A trainer still being started on another
    thread at that fork would hang its `Popen` for good (the fork copies the pipe `Popen` waits on into a process
    that never execs), and no trainer would run or be watched; so `start` returns only once they are started."""
    out = tmp_path / "trainers.txt"
    status_file = tmp_path / "run" / "serve.json"
    supervisor = TrainerSupervisor(2, status_file, command=[sys.executable, "-c", GRACEFUL, str(out)])
    supervisor.start()
    try:
        status = read_status(status_file)
        assert status is not None
        assert (status.expected, status.running) == (2, 2)
        child = os.fork()  # what granian does next: a process that never execs
        if child == 0:
            time.sleep(2)
            os._exit(0)
        wait_until(lambda: len(started(out)) == 2)
        os.waitpid(child, 0)
    finally:
        supervisor.stop()
    assert not status_file.exists()

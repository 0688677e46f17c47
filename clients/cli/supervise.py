"""The embedded trainers of `tunewright serve`: `tunewright worker` subprocesses, kept running.

`serve` starts `--trainers` workers as it starts listening, and one thread of it watches them. A worker that exits while
`serve` runs (a bug, an out-of-memory kill, a `kill -9`) is logged with its exit code or signal and started
again after a backoff: 1 s, doubled for each exit that follows a run shorter than a minute, at most 60 s. The
restarts and the live count reach the API processes through the status file of `storage/supervision.py`
(`/healthz`, `/metrics`).

No zombies, no orphans: the watching thread reaps them, and when `serve` stops it sends each one
SIGTERM (the graceful stop: finish the step, keep a resume point, give the job back), waits, and kills what is
left after `TRAINER_STOP_S`. Each worker runs in its own session, so a terminal's Ctrl-C reaches `serve` alone
and the worker gets the one SIGTERM it needs (a second signal would stop it at once); on Linux the kernel sends
it SIGTERM too should `serve` die without stopping it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunewright.storage.supervision import WRITE_EVERY_S, TrainerStatus, write_status

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

logger = logging.getLogger("tunewright.serve")

WORKER_COMMAND = (sys.executable, "-m", "tunewright.clients.cli.main", "worker")
TRAINER_STOP_S = 120
"""How long `serve` waits for its trainers to finish their step and save their resume point."""
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0
STABLE_S = 60.0
"""A trainer that ran at least this long before it exited is restarted after `RESTART_FIRST_S` again."""
POLL_S = 0.5
PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    """The C library's `prctl`, resolved in the parent (the child must not load libraries between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _child_setup(parent: int) -> Callable[[], None]:
    """What the child runs before exec: yield the CPU to the API, and die with `parent` (Linux)."""

    def setup() -> None:
        os.nice(5)
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))
            if os.getppid() != parent:  # the parent died before the line above took effect
                os.kill(os.getpid(), signal.SIGTERM)

    return setup


def describe_exit(code: int) -> str:
    """`exited with code N` or `was killed by SIGNAME`, from a `Popen.returncode`."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


@dataclass(slots=True)
class _Trainer:
    """One trainer slot: its process (None between a death and its restart) and its backoff."""

    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = 0.0
    restart_at: float = 0.0


class TrainerSupervisor:
    """Starts `count` trainers, restarts those that exit, publishes their status, and stops them.

    Args:
        count: Trainers to keep running.
        status_file: Where the status goes (see `storage/supervision.py`).
        command: The trainer's command line (`tunewright worker` on this interpreter).
    """

    def __init__(self, count: int, status_file: Path, *, command: Sequence[str] = WORKER_COMMAND) -> None:
        self.status_file = status_file
        self.restarts = 0
        self._command = list(command)
        self._trainers = [_Trainer(number) for number in range(1, count + 1)]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer-supervisor", daemon=True)
        self._published: tuple[int, int] | None = None
        self._published_at = 0.0

    def start(self) -> None:
        """Start the trainers now, then the watch on the supervisor's thread.

        `serve` calls this before granian forks its workers, and the first trainers are started here, on the
        calling thread, for that reason: `Popen` waits for its child's exec on a pipe, and a fork by another thread
        in that moment (granian starting a worker) copies the pipe's write end into a process that never execs,
        so the wait would never end. The calling thread is `serve`'s main thread, which lives as long as the
        trainers (their death signal follows the thread that started them).
        """
        for trainer in self._trainers:
            self._spawn(trainer)
        self._publish(force=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop every trainer gracefully (see the module docstring) and remove the status file; blocks."""
        self._stopping.set()
        if self._thread.ident is not None:  # never started when the port could not be bound
            self._thread.join()

    def running(self) -> int:
        """How many trainers are alive now."""
        return sum(1 for trainer in self._trainers if trainer.process is not None)

    def _run(self) -> None:
        try:
            while not self._stopping.wait(POLL_S):
                try:
                    self._watch()
                    self._publish()
                except Exception:  # the watch must outlive any one failure, or nothing restarts the trainers
                    logger.exception("trainer supervision failed; trying again")
        finally:
            self._stop_all()
            self.status_file.unlink(missing_ok=True)

    def _spawn(self, trainer: _Trainer) -> None:
        try:
            trainer.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self._command, preexec_fn=_child_setup(os.getpid()), start_new_session=True
            )
        except OSError as exc:  # out of processes or memory: try again later, as after an exit
            logger.error("could not start trainer %d: %s", trainer.number, exc)
            self._schedule(trainer, lived_s=0.0)
            return
        trainer.started = time.monotonic()
        logger.info("trainer %d started (pid %d)", trainer.number, trainer.process.pid)

    def _schedule(self, trainer: _Trainer, *, lived_s: float) -> None:
        if trainer.delay == 0.0 or lived_s >= STABLE_S:
            trainer.delay = RESTART_FIRST_S
        else:
            trainer.delay = min(trainer.delay * 2, RESTART_MAX_S)
        trainer.restart_at = time.monotonic() + trainer.delay

    def _watch(self) -> None:
        """Reap trainers that exited and start again those whose backoff has passed."""
        now = time.monotonic()
        for trainer in self._trainers:
            if trainer.process is None:
                if now >= trainer.restart_at:
                    self.restarts += 1
                    self._spawn(trainer)
                continue
            code = trainer.process.poll()
            if code is None:
                continue
            lived = now - trainer.started
            self._schedule(trainer, lived_s=lived)
            logger.warning(
                "trainer %d (pid %d) %s after %.0f s; starting it again in %.0f s",
                trainer.number,
                trainer.process.pid,
                describe_exit(code),
                lived,
                trainer.delay,
            )
            trainer.process = None

    def _publish(self, *, force: bool = False) -> None:
        """Write the status file when the counts changed, and at least every `WRITE_EVERY_S`."""
        now = time.monotonic()
        counts = (self.running(), self.restarts)
        if not force and counts == self._published and now - self._published_at < WRITE_EVERY_S:
            return
        status = TrainerStatus(
            expected=len(self._trainers), running=counts[0], restarts=counts[1], updated_at=time.time()
        )
        try:
            write_status(self.status_file, status)
        except OSError as exc:  # a full disk: /healthz will call the trainers stale; the watch goes on
            logger.warning("could not write the trainer status file %s: %s", self.status_file, exc)
            return
        self._published, self._published_at = counts, now

    def _stop_all(self) -> None:
        live = [trainer.process for trainer in self._trainers if trainer.process is not None]
        for process in live:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + TRAINER_STOP_S
        for process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("trainer (pid %d) did not stop within %d s; killing it", process.pid, TRAINER_STOP_S)
                process.kill()
                process.wait()
        for trainer in self._trainers:
            trainer.process = None

"""Processes the benchmarks drive: a granian server (1 ASGI worker) and a moto S3 server, on loopback ports.

Both run as subprocesses of the benchmark, so what they cost (CPU, memory) is theirs, measured from outside:
`ProcessTree` reads the resident memory and CPU time of a server and its worker processes from /proc.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

BENCH_DIR = Path(__file__).resolve().parent
START_TIMEOUT_S = 60.0

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_average() -> str:
    """The machine's 1/5/15-minute load averages, as `uptime` shows them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


class Process:
    """A server subprocess on a free loopback port, polled on `probe_path` until it answers HTTP."""

    def __init__(self, name: str, argv: list[str], *, port: int, probe_path: str, log_dir: Path) -> None:
        """Remember how to start it; `start()` does."""
        self.name = name
        self.argv = argv
        self.port = port
        self.probe_path = probe_path
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The process id of the (running) server."""
        assert self.process is not None
        return self.process.pid

    def start(self, env: Mapping[str, str]) -> Process:
        """Start the process and wait until it answers; raises RuntimeError with its log if it does not."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=dict(env))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(self.url + self.probe_path, timeout=2):
                    return self
            except urllib.error.HTTPError:
                return self  # any HTTP answer means it is up
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{self.log_path.read_text(errors='replace')[-4000:]}")

    def stop(self) -> None:
        """Terminate the process (and with it granian's workers), killing it if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def granian(name: str, target: str, *, log_dir: Path, factory: bool = False) -> Process:
    """granian serving `target` with one ASGI worker, access log off: the same settings for every app."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--workers",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        "--working-dir",
        str(BENCH_DIR),
    ]
    if factory:
        argv.append("--factory")
    argv.append(target)
    return Process(name, argv, port=port, probe_path="/healthz", log_dir=log_dir)


def moto(*, log_dir: Path) -> Process:
    """moto's S3 server (it keeps every object in its own memory)."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return Process("moto", argv, port=port, probe_path="/moto-api/", log_dir=log_dir)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        found.extend(int(child) for child in text.split())
    return found


def _status_kib(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` number (KiB for memory fields); 0 once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class ProcessTree:
    """Resident memory of a process and all its descendants (granian's main process and its worker)."""

    def __init__(self, pid: int) -> None:
        """Watch `pid` and its descendants."""
        self.root = pid

    def pids(self) -> list[int]:
        """The root and its descendants, now."""
        pending, seen = [self.root], []
        while pending:
            pid = pending.pop()
            seen.append(pid)
            pending.extend(_children(pid))
        return seen

    def rss_kib(self) -> int:
        """Sum of VmRSS over the tree, in KiB."""
        return sum(_status_kib(pid, "VmRSS") for pid in self.pids())

    def threads(self) -> int:
        """Threads of every process of the tree, now."""
        return sum(_status_kib(pid, "Threads") for pid in self.pids())

    def cpu_s(self) -> float:
        """CPU time (user + system) the tree's processes have used so far, in seconds."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / os.sysconf("SC_CLK_TCK")

    def hwm_kib(self) -> dict[int, int]:
        """VmHWM (peak resident set since start) of each process of the tree, in KiB."""
        return {pid: _status_kib(pid, "VmHWM") for pid in self.pids()}


class RssSampler:
    """Samples a process tree's RSS and thread count on a thread while a block runs; `peak_*` are the highest."""

    def __init__(self, tree: ProcessTree, *, interval_s: float = 0.01) -> None:
        """Sample `tree` every `interval_s` seconds between `__enter__` and `__exit__`."""
        self.tree = tree
        self.interval_s = interval_s
        self.baseline_kib = 0
        self.peak_kib = 0
        self.baseline_threads = 0
        self.peak_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.tree.rss_kib())
            self.peak_threads = max(self.peak_threads, self.tree.threads())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self.baseline_kib = self.tree.rss_kib()
        self.peak_kib = self.baseline_kib
        self.baseline_threads = self.peak_threads = self.tree.threads()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self.tree.rss_kib())

    @property
    def growth_mib(self) -> float:
        """Peak minus baseline, in MiB."""
        return (self.peak_kib - self.baseline_kib) / 1024

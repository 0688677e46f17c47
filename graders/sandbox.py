"""Running a python grader's `grade(sample, item)` in a separate, fenced process.

Each call starts `python -I graders/sandbox_child.py` (the interpreter running this code, isolated: no
`PYTHON*` variables, no user site, no script folder on the path) and, where `unshare` can make one, inside an
empty network namespace (`unshare -n`, or `unshare -rn` through an unprivileged user namespace). What holds:

- **Kernel-enforced, always:** CPU time (`RLIMIT_CPU`, then SIGKILL a second later), address space
  (`RLIMIT_AS`: a larger allocation is a `MemoryError` in the grader), the size of any file it writes
  (`RLIMIT_FSIZE`), no core dumps, and the wall clock (the parent kills the process group when it passes).
- **Kernel-enforced where `unshare` works** (probed once per process; it does on most Linux hosts as root or with
  unprivileged user namespaces, and not in a container whose seccomp profile forbids `unshare`): no network at
  all, whatever the code does, native code and child processes included.
- **Always, in Python:** an empty environment (only `HOME`/`TMPDIR` pointing at the working directory, a UTF-8
  locale and one-thread math libraries), a working directory that is a fresh temporary folder deleted afterwards
  (whatever the grader wrote there is gone), and the fence of `sandbox_child.py`: `socket` patched and an audit
  hook refusing network, process creation and signals, `ctypes`, raising limits, and files outside the
  interpreter's library folders and the working directory. Native code is not seen by that fence.
- **Output:** what the grader prints is kept up to `output_bytes` (the rest is read and dropped, counted) and
  shown only in a runtime error's details.

It runs as the service's user, so a host that runs python graders for tenants it does not trust should give that
user nothing secret to read beyond what the fence covers (a container or VM of its own); the operator opts in with
`TUNEWRIGHT_PYTHON_GRADERS=true`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

logger = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("sandbox_child.py")
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one python grader run; the defaults are OpenAI's (2 minutes, 2 GiB of memory, 1 GiB of disk).

    Attributes:
        wall_s: Wall-clock seconds before the process is killed.
        cpu_s: CPU seconds (`RLIMIT_CPU`).
        memory_bytes: Address space (`RLIMIT_AS`), the interpreter's own included.
        file_bytes: Largest file the grader may write (`RLIMIT_FSIZE`).
        output_bytes: Printed output kept for error details.
        result_bytes: Largest result message accepted from the child.
    """

    wall_s: float = 120.0
    cpu_s: int = 120
    memory_bytes: int = 2 * 1024**3
    file_bytes: int = 1024**3
    output_bytes: int = 16 * 1024
    result_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class PythonOutcome:
    """What one run gave.

    Attributes:
        score: The number `grade` returned, or None on any error.
        error: `runtime` (the grader raised, returned no number, or its process died), `timeout` (out of wall
            or CPU time), `server` (the sandbox could not run it), or None.
        details: The traceback or reason, with the grader's output (bounded), for `runtime` and `timeout`.
        server_error_type: A short reason for `server`.
    """

    score: float | None
    error: Literal["runtime", "timeout", "server"] | None = None
    details: str | None = None
    server_error_type: str | None = None


def run_python(source: str, sample: dict[str, Any], item: Any, limits: SandboxLimits | None = None) -> PythonOutcome:
    """Run `grade(sample, item)` from `source` in a fenced child process and return its outcome (blocking)."""
    limits = limits or SandboxLimits()
    payload = json.dumps({"source": source, "sample": sample, "item": item}).encode()
    workdir = tempfile.mkdtemp(prefix="tunewright-grader-")
    try:
        return _run(payload, workdir, limits)
    finally:
        _remove_tree(workdir)


def _run(payload: bytes, workdir: str, limits: SandboxLimits) -> PythonOutcome:
    command = [*isolation_prefix(), sys.executable, "-I", str(CHILD)]
    environment = {
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    started = time.monotonic()
    try:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and script, no shell
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=environment,
            start_new_session=True,
        )
    except OSError as exc:
        logger.error("python grader sandbox could not start: %s", exc)
        return PythonOutcome(score=None, error="server", server_error_type="sandbox_start_failed")
    run = _Exchange(process, payload, limits, deadline=started + limits.wall_s)
    try:
        _limit(process.pid, limits)
        run.communicate()
    finally:
        _kill(process)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        process.wait()
    return _outcome(run, process.returncode, limits)


def _limit(pid: int, limits: SandboxLimits) -> None:
    """Set the child's resource limits before it reads its request (it waits on stdin until then)."""
    wanted = {
        resource.RLIMIT_CPU: (limits.cpu_s, limits.cpu_s + 1),
        resource.RLIMIT_AS: (limits.memory_bytes, limits.memory_bytes),
        resource.RLIMIT_FSIZE: (limits.file_bytes, limits.file_bytes),
        resource.RLIMIT_CORE: (0, 0),
    }
    for kind, (soft, hard) in wanted.items():
        _, current_hard = resource.getrlimit(kind)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        with contextlib.suppress(ProcessLookupError):  # already gone: its outcome says why
            resource.prlimit(pid, kind, (soft, hard))


class _Exchange:
    """Feeds the request to the child and reads its result and output, within the deadline and the caps."""

    def __init__(
        self, process: subprocess.Popen[bytes], payload: bytes, limits: SandboxLimits, *, deadline: float
    ) -> None:
        self.process = process
        self.payload = memoryview(payload)
        self.limits = limits
        self.deadline = deadline
        self.result = bytearray()
        self.result_overflow = False
        self.output = bytearray()
        self.output_total = 0
        self.timed_out = False

    def communicate(self) -> None:
        stdin, stdout, stderr = self.process.stdin, self.process.stdout, self.process.stderr
        assert stdin is not None and stdout is not None and stderr is not None
        written = 0
        with selectors.DefaultSelector() as selector:
            for pipe in (stdin, stdout, stderr):
                os.set_blocking(pipe.fileno(), False)
            selector.register(stdin, selectors.EVENT_WRITE)
            selector.register(stdout, selectors.EVENT_READ)
            selector.register(stderr, selectors.EVENT_READ)
            while selector.get_map():
                left = self.deadline - time.monotonic()
                if left <= 0:
                    self.timed_out = True
                    return
                for key, _ in selector.select(left):
                    if key.fileobj is stdin:
                        written = self._write(selector, stdin, written)
                    elif not self._read(key.fileobj):  # type: ignore[arg-type]
                        selector.unregister(key.fileobj)
        left = self.deadline - time.monotonic()
        try:
            self.process.wait(timeout=max(left, 0.001))
        except subprocess.TimeoutExpired:
            self.timed_out = True

    def _write(self, selector: selectors.BaseSelector, stdin: IO[bytes], written: int) -> int:
        try:
            written += os.write(stdin.fileno(), self.payload[written : written + _CHUNK])
        except BlockingIOError:  # the pipe filled up since select(): try again on the next round
            return written
        except BrokenPipeError:  # the child is gone: its outcome says why
            written = len(self.payload)
        if written >= len(self.payload):
            selector.unregister(stdin)
            stdin.close()
        return written

    def _read(self, pipe: IO[bytes]) -> bool:
        """Read what is there; False at end of file."""
        try:
            chunk = os.read(pipe.fileno(), _CHUNK)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        if pipe is self.process.stdout:
            if len(self.result) + len(chunk) > self.limits.result_bytes:
                self.result_overflow = True
            else:
                self.result += chunk
        else:
            self.output_total += len(chunk)
            room = self.limits.output_bytes - len(self.output)
            if room > 0:
                self.output += chunk[:room]
        return True

    def printed(self) -> str:
        """The grader's output as kept, with a note when some was dropped."""
        text = self.output.decode(errors="replace")
        if self.output_total > len(self.output):
            text += f"\n… (output truncated: {self.output_total} bytes printed, the first {len(self.output)} kept)"
        return text


def _outcome(run: _Exchange, returncode: int, limits: SandboxLimits) -> PythonOutcome:
    """Classify a finished run."""
    printed = run.printed()

    def with_output(text: str) -> str:
        return f"{text}\nOutput:\n{printed}" if printed.strip() else text

    if run.timed_out:
        return PythonOutcome(
            score=None, error="timeout", details=with_output(f"grade() did not finish within {limits.wall_s:g} s.")
        )
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return PythonOutcome(
            score=None,
            error="timeout",
            details=with_output(f"grade() used more than {limits.cpu_s} s of CPU time."),
        )
    if run.result_overflow:
        return PythonOutcome(score=None, error="runtime", details=with_output("The grader's result was too large."))
    try:
        message = json.loads(run.result)
    except ValueError:
        message = None
    if isinstance(message, dict) and isinstance(message.get("score"), int | float):
        return PythonOutcome(score=float(message["score"]))
    if isinstance(message, dict) and isinstance(message.get("error"), str):
        return PythonOutcome(score=None, error="runtime", details=with_output(message["error"]))
    how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"code {returncode}"
    return PythonOutcome(score=None, error="runtime", details=with_output(f"The grader's process exited with {how}."))


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill the child's process group (it runs in a session of its own); nothing if it is gone."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


@functools.cache
def isolation_prefix() -> tuple[str, ...]:
    """The command that runs the child in an empty network namespace here, or () when none works (probed once)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        logger.warning("python graders: no `unshare` on this host; network is fenced in Python only")
        return ()
    for flags in ("-n", "-rn"):
        prefix = (unshare, flags, "--")
        try:
            probe = subprocess.run(  # noqa: S603 - a fixed command
                [*prefix, sys.executable, "-I", "-c", "pass"], capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    logger.warning("python graders: `unshare -n` is not permitted here; network is fenced in Python only")
    return ()


def _remove_tree(path: str) -> None:
    """Delete the working directory, whatever permissions the grader left on what it made there."""

    def make_writable(function: Any, failed: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            Path(failed).parent.chmod(stat.S_IRWXU)
            Path(failed).chmod(stat.S_IRWXU)
            function(failed)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=make_writable)

"""The trainers' status as `serve` publishes it for its API processes: a small JSON file in the data dir.

`serve` supervises its `tunewright worker` subprocesses, but the API runs in granian's worker processes, which
cannot see them. So the supervisor replaces `<data dir>/run/serve-<pid>.json` (write, then rename) whenever
the number of live trainers changes and at least every `WRITE_EVERY_S`, and `serve` names that file to the API
processes in `STATUS_FILE_ENV`. Reading it is one small file read, cheap enough for every /healthz and /metrics.
A file older than `STALE_S` means the supervisor itself stopped reporting: no trainer is vouched for.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from pathlib import Path

STATUS_FILE_ENV = "TUNEWRIGHT_TRAINER_STATUS_FILE"
"""Environment variable through which `serve` names its status file to the API processes (not a setting)."""
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's variable, through which `serve` names to its API processes the directory where they share
their counters (api/metrics.py). It must be set before prometheus_client is imported."""
WRITE_EVERY_S = 5.0
STALE_S = 3 * WRITE_EVERY_S
LEFTOVER_AGE_S = 3600.0
"""Status files of a `serve` that died without removing its own are deleted after this long."""


class TrainerStatus(msgspec.Struct, kw_only=True):
    """How many trainers `serve` should run, how many run, how often they were restarted, and when it said so."""

    expected: int
    running: int
    restarts: int
    updated_at: float

    def is_stale(self, now: float) -> bool:
        """Whether the supervisor has not reported for longer than `STALE_S`."""
        return now - self.updated_at > STALE_S


def status_path(data_dir: Path, pid: int) -> Path:
    """The status file of the `serve` process `pid`."""
    return data_dir / "run" / f"serve-{pid}.json"


def write_status(path: Path, status: TrainerStatus) -> None:
    """Replace the status file atomically (readers see the old content or the new, never a part)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(msgspec.json.encode(status))
    temporary.replace(path)


def read_status(path: Path) -> TrainerStatus | None:
    """The status in the file, or None when it is missing or unreadable."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=TrainerStatus)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def remove_leftovers(run_dir: Path, *, now: float | None = None) -> None:
    """Delete the status files that crashed `serve` processes left (untouched for `LEFTOVER_AGE_S`)."""
    cutoff = (time.time() if now is None else now) - LEFTOVER_AGE_S
    for leftover in run_dir.glob("serve-*.json"):
        try:
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:
            continue  # another serve removed it first

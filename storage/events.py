"""Building `fine_tuning.job.event` rows: one constructor shared by the API and the trainer."""

from __future__ import annotations

import time
from typing import Any

from tunewright.storage.ids import new_id
from tunewright.storage.records import JobEventRecord


def make_event(
    job_id: str,
    project_id: str,
    message: str,
    *,
    level: str = "info",
    kind: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEventRecord:
    """Return a new event of a job stamped now.

    Args:
        job_id: The job.
        project_id: Its project.
        message: What a user reads.
        level: `info`, `warn` or `error`.
        kind: The event `type`: `message` or `metrics`.
        data: Structured details (a metrics event's step numbers).
    """
    return JobEventRecord(
        id=new_id("event"),
        job_id=job_id,
        project_id=project_id,
        created_at=int(time.time()),
        level=level,
        message=message,
        type=kind,
        data=data,
    )

"""What the benchmarks store and send: a tenant with a project key, fine-tuning jobs, JSONL training data."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from tunewright.storage.api_keys import mint_api_key
from tunewright.storage.ids import new_id, new_model_slot
from tunewright.storage.records import FileRecord, JobEventRecord, JobRecord

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tunewright.storage.base import Stores

MIB = 1024 * 1024


class Tenant:
    """An organization, a project in it, and the project key's secret in clear."""

    def __init__(self, organization_id: str, project_id: str, key: str) -> None:
        """Hold the ids and the key."""
        self.organization_id = organization_id
        self.project_id = project_id
        self.key = key


def make_tenant(stores: Stores, slug: str) -> Tenant:
    """A new organization `slug`, one project and one project key (as `tests/fixtures/app.py` makes them)."""
    organization = stores.metadata.create_organization(name=slug.title(), slug=slug)
    project = stores.metadata.create_project(organization_id=organization.id, name=f"{slug} project")
    record, secret = mint_api_key(
        organization_id=organization.id, project_id=project.id, name="bench key", kind="project"
    )
    stores.metadata.create_api_key(record)
    return Tenant(organization.id, project.id, secret)


def make_jobs(stores: Stores, tenant: Tenant, count: int) -> None:
    """Store a fine-tune file row and `count` jobs on it, each with its first event, as the API would."""
    now = int(time.time())
    file = FileRecord(
        id=new_id("file"),
        project_id=tenant.project_id,
        bytes=1234,
        created_at=now,
        filename="train.jsonl",
        purpose="fine-tune",
        blob_key=f"{tenant.project_id}/files/unused",
        sha256="0" * 64,
        line_count=10,
    )
    stores.metadata.insert_file(file)
    hyper = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
    for index in range(count):
        job = JobRecord(
            id=new_id("job"),
            project_id=tenant.project_id,
            organization_id=tenant.organization_id,
            created_at=now,
            updated_at=now,
            model="smollm2-135m-instruct",
            base_model="smollm2-135m-instruct",
            status="validating_files",
            training_file=file.id,
            validation_file=None,
            hyperparameters=hyper,
            method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
            seed=index,
            model_slot=new_model_slot(),
            suffix=f"bench-{index}",
            metadata={"run": str(index % 10)},
        )
        event = JobEventRecord(
            id=new_id("event"),
            job_id=job.id,
            project_id=tenant.project_id,
            created_at=now,
            level="info",
            message=f"Created fine-tuning job: {job.id}",
        )
        stores.metadata.insert_job(job, event)


def jsonl_block(size: int = MIB) -> bytes:
    """Exactly `size` bytes of valid chat-format JSON Lines, every line complete (the last one padded)."""
    lines: list[bytes] = []
    total = 0
    index = 0
    while True:
        line = _chat_line(index, "")
        if total + len(line) + len(_chat_line(index + 1, "")) > size:
            break
        lines.append(line)
        total += len(line)
        index += 1
    pad = size - total - len(_chat_line(index, ""))
    lines.append(_chat_line(index, "x" * pad))
    block = b"".join(lines)
    assert len(block) == size
    return block


def _chat_line(index: int, pad: str) -> bytes:
    line = {
        "messages": [
            {"role": "system", "content": "You are a terse assistant that answers in one sentence."},
            {"role": "user", "content": f"What is {index} plus {index}?{pad}"},
            {"role": "assistant", "content": f"{index} plus {index} is {2 * index}."},
        ]
    }
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def jsonl_stream(size_mib: int, *, block: bytes | None = None) -> Iterator[bytes]:
    """`size_mib` MiB of valid JSON Lines, generated one 1 MiB block at a time (never held whole)."""
    block = block or jsonl_block()
    for _ in range(size_mib):
        yield block

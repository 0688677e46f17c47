"""Usage of /v1/chat/completions and /v1/completions: the wire `usage` object and one usage row per request."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.to_thread

from tunewright.api.schemas import Response
from tunewright.storage.ids import new_id
from tunewright.storage.records import UsageRecord

if TYPE_CHECKING:
    from tunewright.api.auth import Principal
    from tunewright.api.metrics import Metrics
    from tunewright.api.ratelimits.limiter import Admission
    from tunewright.inference.engine import GenerationEvent
    from tunewright.storage.base import Stores

logger = logging.getLogger(__name__)


class CompletionUsage(Response):
    """`CompletionUsage`: real token counts of the request (the prompt once, every choice's completion)."""

    completion_tokens: int
    prompt_tokens: int
    total_tokens: int


@dataclass
class Meter:
    """Counts one request's tokens and writes its usage row (without `stores`, only counts: an inference node).

    With `metrics`, it also observes the time to the first generated token and adds the tokens to the counters.
    """

    stores: Stores | None
    principal: Principal | None
    model: str
    endpoint: Literal["chat.completions", "completions"]
    streamed: bool
    started: float = field(default_factory=time.monotonic)
    base_model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ran: bool = False
    admission: Admission | None = None
    metrics: Metrics | None = None

    def count(self, event: GenerationEvent) -> None:
        """Add an event's tokens; the first of them is the request's first token."""
        self.ran = True
        if event.token_ids and not self.completion_tokens and self.metrics is not None:
            self.metrics.first_token.labels(self.base_model).observe(time.monotonic() - self.started)
        self.completion_tokens += len(event.token_ids)

    def usage(self) -> CompletionUsage:
        """The wire `usage` object."""
        return CompletionUsage(
            completion_tokens=self.completion_tokens,
            prompt_tokens=self.prompt_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )

    async def record(self) -> None:
        """Settle the rate-limit charge and write the usage row (shielded: a dropped stream's cancel runs it too)."""
        if self.admission is not None:
            with anyio.CancelScope(shield=True):
                await self.admission.settle(self.prompt_tokens + self.completion_tokens)
        if not self.ran or self.stores is None or self.principal is None:
            return
        record = UsageRecord(
            id=new_id("usage"),
            project_id=self.principal.project_id or "",
            api_key_id=self.principal.key_id,
            model=self.model,
            base_model=self.base_model,
            endpoint=self.endpoint,
            streamed=self.streamed,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=round((time.monotonic() - self.started) * 1000),
            created_at=int(time.time()),
        )
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self._write, self.stores, record)
            except Exception:  # the answer is already out; a lost row is logged, not raised
                logger.exception("could not record usage of %s", self.model)

    def _write(self, stores: Stores, record: UsageRecord) -> None:
        """Write the usage row, then add its tokens to /metrics (the project's label may read the database)."""
        stores.metadata.insert_usage(record)
        if self.metrics is not None:
            self.metrics.count_tokens(
                record.project_id, record.base_model, prompt=record.prompt_tokens, completion=record.completion_tokens
            )

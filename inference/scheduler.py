"""One scheduler thread per base model: continuous batching of rows from many requests and adapters.

Each choice of each request is a row. Rows wait in a ``FairQueue`` keyed by project; between decode steps the
thread admits as many as ``inference_max_batch`` allows, each free place going to the waiting project with the
fewest rows in the batch (a project whose 2,000 rows fill the batch gets the next free place only when no other
project waits), prefills them together (left-padded, each with its adapter name), and merges them into the
running batch (``KVBatch``). Every step feeds each row its
last token, picks the next with the row's own ``RowSampler`` and releases new text through the row's
``StopText``. A row leaves the batch when it finishes or its request is cancelled (checked before every
forward), so its place is free for the next row at once. Events go to each request's ``EventSink``; the end of a
request is a ``None``, put only after all of its rows have left the batch.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tunewright.inference.batch import KVBatch, left_padded, new_cache, positions
from tunewright.inference.detokenize import StopText, decode, token_text
from tunewright.inference.engine import EngineError, GenerationEvent, TokenLogprob, TopLogprob
from tunewright.inference.fair import FairQueue
from tunewright.inference.sampling import RowSampler, row_seed

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import torch

    from tunewright.inference.engine import EventSink, FinishReason, GenerationRequest
    from tunewright.inference.models import BaseModel
    from tunewright.inference.sampling import Choice

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Ticket:
    """A request in flight: its rows report here, and ``done`` runs once when the last one has left."""

    request: GenerationRequest
    adapter: str
    cancelled: threading.Event
    sink: EventSink
    done: Callable[[], None] | None = None
    rows_left: int = 0
    failed: bool = False

    def stopped(self) -> bool:
        """True once the request was cancelled or one of its rows failed."""
        return self.failed or self.cancelled.is_set()

    def fail(self, error: BaseException) -> None:
        """Report an error to the sink (once); the request's other rows leave at the next step."""
        if not self.failed:
            self.failed = True
            self.sink.put(error)


@dataclass(eq=False)
class Row:
    """One choice being generated."""

    ticket: Ticket
    index: int
    sampler: RowSampler
    text: StopText
    generated: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    position: int = 0


class Scheduler:
    """The decode loop of one base model, on its own thread."""

    def __init__(self, model: BaseModel, *, max_batch: int) -> None:
        """Start the thread (it sleeps until rows arrive)."""
        self.model = model
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._waiting: FairQueue[Row] = FairQueue(key=lambda row: row.ticket.request.project_id)
        self._admitted: list[Row] = []
        self._rows: list[Row] = []
        self._batch: KVBatch | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"scheduler-{model.model_id}", daemon=True)
        self._thread.start()

    def submit(self, ticket: Ticket) -> None:
        """Queue a request's rows (``n`` of them) for the batch."""
        request = ticket.request
        rows = [self._new_row(ticket, index) for index in range(request.n)]
        ticket.rows_left = len(rows)
        with self._cond:
            if self._closed:
                raise EngineError("the inference engine is shutting down", code="engine_closed", status=503)
            self._waiting.extend(rows)
            self._cond.notify()

    def active_rows(self) -> int:
        """Rows in the batch or waiting for it."""
        with self._cond:
            return len(self._rows) + len(self._admitted) + len(self._waiting)

    def close(self) -> None:
        """Stop the thread; requests still running end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _new_row(self, ticket: Ticket, index: int) -> Row:
        params = ticket.request.params
        sampler = RowSampler(
            params, seed=row_seed(params.seed, index), vocab_size=self.model.vocab_size, device=self.model.device
        )
        return Row(ticket=ticket, index=index, sampler=sampler, text=StopText(params.stop))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._rows:
                    self._cond.wait()
                if self._closed:
                    break
            try:
                self._iterate()
            except Exception as exc:
                logger.exception("generation failed on %s", self.model.model_id)
                self._fail_all(EngineError(f"generation failed: {exc}", code="server_error", status=500))
        self._fail_all(EngineError("the inference engine is shutting down", code="engine_closed", status=503))

    def _iterate(self) -> None:
        """Drop cancelled rows, admit waiting ones, then run one decode step."""
        self._drop_stopped()
        admitted = self._admit()
        if admitted:
            self._prefill(admitted)
        if self._rows:
            self._step()

    def _admit(self) -> list[Row]:
        with self._cond:
            room = self.max_batch - len(self._rows)
            self._admitted = self._waiting.take(room)
            return self._admitted

    def _prefill(self, rows: list[Row]) -> None:
        """Run the prompts of newly admitted rows, choose their first tokens and merge them into the batch."""
        prompts = [row.ticket.request.prompt_ids for row in rows]
        ids, mask = left_padded(prompts, self.model.pad_id, self.model.device)
        cache = new_cache()
        logits = self.model.forward(ids, mask, positions(mask), cache, [row.ticket.adapter for row in rows])
        group = KVBatch(cache, mask)
        for row, prompt in zip(rows, prompts, strict=True):
            row.position = len(prompt)
        with self._cond:
            if self._batch is None:
                self._batch = group
            else:
                self._batch.extend(group)
            self._rows.extend(rows)
            self._admitted = []
        self._advance(rows, logits)

    def _step(self) -> None:
        """Feed every row its last token and choose the next."""
        import torch

        batch = self._batch
        if batch is None:
            return
        device = self.model.device
        ids = torch.tensor([[row.generated[-1]] for row in self._rows], dtype=torch.long, device=device)
        pos = torch.tensor([[row.position] for row in self._rows], dtype=torch.long, device=device)
        mask = batch.grow()
        logits = self.model.forward(ids, mask, pos, batch.cache, [row.ticket.adapter for row in self._rows])
        for row in self._rows:
            row.position += 1
        self._advance(list(self._rows), logits)

    def _advance(self, rows: Sequence[Row], logits: torch.Tensor) -> None:
        """Choose each row's next token from its logits; rows that finish leave the batch."""
        finished = []
        for k, row in enumerate(rows):
            try:
                if self._choose(row, logits[k]):
                    finished.append(row)
            except (RuntimeError, ValueError) as exc:  # e.g. non-finite probabilities: this request only
                logger.warning("sampling failed for a row: %s", exc)  # the details stay in the log
                message = "The server could not sample a token for this request."
                row.ticket.fail(EngineError(message, code="server_error", status=500))
                finished.append(row)
        if finished:
            self._remove(finished)

    def _choose(self, row: Row, logits: torch.Tensor) -> bool:
        """Add one token to a row and emit what it releases; return True when the row is finished."""
        choice = row.sampler.choose(logits)
        params = row.ticket.request.params
        if choice.token_id in self.model.stop_ids:
            self._finish(row, "stop")
            return True
        row.generated.append(choice.token_id)
        row.pending.append(choice.token_id)
        if params.logprobs or params.top_logprobs:
            row.pending_logprobs.append(self._logprob(choice))
        if len(row.generated) >= params.max_new_tokens:
            self._finish(row, "length")
            return True
        text = row.text.update(decode(self.model.tokenizer, row.generated))
        if row.text.stopped:
            self._finish(row, "stop", text)
            return True
        if text:
            self._emit(row, text)
        return False

    def _finish(self, row: Row, reason: FinishReason, text: str | None = None) -> None:
        """Emit a row's last event (the rest of its text, its last tokens, the finish reason)."""
        if text is None:
            text = row.text.update(decode(self.model.tokenizer, row.generated), final=True)
        self._emit(row, text, finish_reason="stop" if row.text.stopped else reason)

    def _emit(self, row: Row, text: str, finish_reason: FinishReason | None = None) -> None:
        wants = row.ticket.request.params
        event = GenerationEvent(
            index=row.index,
            text=text,
            token_ids=row.pending,
            logprobs=row.pending_logprobs if (wants.logprobs or wants.top_logprobs) else None,
            finish_reason=finish_reason,
        )
        row.pending, row.pending_logprobs = [], []
        row.ticket.sink.put(event)

    def _logprob(self, choice: Choice) -> TokenLogprob:
        tokenizer = self.model.tokenizer
        token, raw = token_text(tokenizer, choice.token_id)
        top = []
        for token_id, logprob in choice.top:
            text, data = token_text(tokenizer, token_id)
            top.append(TopLogprob(token_id=token_id, token=text, logprob=logprob, bytes=data))
        return TokenLogprob(
            token_id=choice.token_id, token=token, logprob=float(choice.logprob or 0.0), bytes=raw, top_logprobs=top
        )

    def _drop_stopped(self) -> None:
        """Remove the rows (running or waiting) of requests that were cancelled or abandoned."""
        with self._cond:
            waiting = self._waiting.remove(lambda row: row.ticket.stopped())
        running = [row for row in self._rows if row.ticket.stopped()]
        if running:
            self._remove(running)
        for row in waiting:
            self._row_left(row)

    def _remove(self, rows: Sequence[Row]) -> None:
        """Take rows out of the batch (their cache rows too) and tell their requests."""
        gone = set(map(id, rows))
        with self._cond:
            for row in rows:
                self._waiting.done(row)
            keep = [k for k, row in enumerate(self._rows) if id(row) not in gone]
            self._rows = [self._rows[k] for k in keep]
            if not keep:
                self._batch = None
            elif self._batch is not None:
                self._batch.keep(keep)
        for row in rows:
            self._row_left(row)

    def _row_left(self, row: Row) -> None:
        ticket = row.ticket
        ticket.rows_left -= 1
        if ticket.rows_left == 0:
            ticket.sink.put(None)
            if ticket.done is not None:
                ticket.done()

    def _fail_all(self, error: EngineError) -> None:
        """End every running and waiting request with ``error`` (the batch is lost)."""
        with self._cond:
            rows = [*self._rows, *self._admitted, *self._waiting.clear()]
            self._rows, self._admitted, self._batch = [], [], None
        for row in rows:
            row.ticket.fail(error)
            self._row_left(row)

"""`GET /v1/fine_tuning/jobs/{id}/events?stream=true`: a job's events as server-sent events (our extension).

Each frame carries the same `fine_tuning.job.event` object as the list, oldest first, starting after `after`
(or at the job's first event). The store is polled until the job has ended and every event is sent, then
`data: [DONE]` closes the stream. Every read runs in a worker thread (the stores are synchronous) and is one
bounded call, so a client that disconnects leaves no thread behind: cancelling the stream's task stops the
loop at its next `await`.

Each poll reads the job's status before the page of events after the last one sent: an event written before
the job reached its terminal status is then always in that page, so `[DONE]` never overtakes it.

Each open stream polls the store, so an API key holds at most `TUNEWRIGHT_MAX_EVENT_STREAMS_PER_KEY` of them
in one API process (`StreamSlots`); one more is a 429 `rate_limit_exceeded` until one closes.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from functools import partial
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from litestar.serialization import encode_json

from tunewright.api.errors import APIError, RateLimitError, ServerError
from tunewright.api.fine_tuning import service
from tunewright.api.fine_tuning.schemas import FineTuningJobEvent
from tunewright.api.sse import DONE_FRAME, HEADERS, KEEPALIVE_FRAME, MEDIA_TYPE, EventStream, SseOperation, error_frame
from tunewright.storage.records import TERMINAL_STATUSES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tunewright.storage.base import Stores
    from tunewright.storage.records import JobEventRecord, Page

logger = logging.getLogger(__name__)

# Module constants rather than settings: tests shorten them with monkeypatch.
POLL_INTERVAL_S = 0.25
KEEPALIVE_S = 15.0
PAGE_SIZE = 100


class ListEventsOperation(SseOperation):
    """`GET …/events`: the JSON list, or with `stream=true` the events as server-sent events."""

    frames = "`data: <fine_tuning.job.event JSON>` frames, oldest first, then `data: [DONE]`."


class StreamSlots:
    """The event streams each API key holds open in this process, at most `limit` per key."""

    def __init__(self, limit: int) -> None:
        """No stream open."""
        self.limit = limit
        self._open: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def acquire(self, key_id: str) -> Callable[[], None]:
        """Hold one of the key's slots; return the function that gives it back (once, however often called).

        Raises:
            RateLimitError: 429 `rate_limit_exceeded`: the key holds `limit` streams already.
        """
        with self._lock:
            if self._open[key_id] >= self.limit:
                raise RateLimitError(
                    f"This API key has {self.limit} event streams open, the most this server allows at once; "
                    "close one before opening another."
                )
            self._open[key_id] += 1
        held = True

        def release() -> None:
            nonlocal held
            with self._lock:
                if held:
                    held = False
                    self._open[key_id] -= 1
                    if not self._open[key_id]:
                        del self._open[key_id]

        return release

    def open(self, key_id: str) -> int:
        """Streams the key holds open now."""
        with self._lock:
            return self._open[key_id]


def event_stream(
    stores: Stores, slots: StreamSlots, job_id: str, *, key_id: str, project_id: str, after: str | None
) -> EventStream:
    """Check the job and the cursor, take one of the key's stream slots, then return the SSE response.

    Call it from a worker thread.

    Args:
        stores: the stores of the app.
        slots: the app's open streams per key.
        job_id: the job whose events to stream.
        key_id: the caller's API key (what the open streams are counted by).
        project_id: the caller's project (another project's job is a 404).
        after: the id of the last event the client already has, or None to start at the first.

    Returns:
        The streaming response; its frames are produced by `event_frames`, which gives the slot back when the
        stream ends however it ends (a stream never started gives it back when it is dropped).

    Raises:
        NotFoundError: the job is not in the project (raised before the first byte: a JSON error response).
        InvalidCursor: `after` is not an event of this job (the app answers 400 naming `after`).
        RateLimitError: the key holds as many open streams as it may.
    """
    service.get_job(stores, job_id, project_id=project_id)
    if after is not None:
        stores.metadata.list_events(job_id, project_id=project_id, after=after, limit=1, order="asc")
    release = slots.acquire(key_id)
    frames = event_frames(stores, job_id, project_id=project_id, after=after, release=release)
    weakref.finalize(frames, release)
    return EventStream(frames, media_type=MEDIA_TYPE, headers=HEADERS)


async def event_frames(
    stores: Stores, job_id: str, *, project_id: str, after: str | None, release: Callable[[], None]
) -> AsyncIterator[bytes]:
    """Yield `data: <event>` frames oldest first, keep-alive comments in silences, then `data: [DONE]`.

    A failure after the first byte cannot change the status any more: it becomes one `data: {"error": …}`
    frame, and the stream closes. `release` runs when the stream ends.
    """
    cursor = after
    quiet_since = time.monotonic()
    try:
        while True:
            status, page = await anyio.to_thread.run_sync(partial(poll, stores, job_id, project_id, cursor))
            for record in page.items:
                yield event_frame(record)
            if page.items:
                cursor = page.items[-1].id
                quiet_since = time.monotonic()
            if page.has_more:
                continue
            if status in TERMINAL_STATUSES:
                yield DONE_FRAME
                return
            if time.monotonic() - quiet_since >= KEEPALIVE_S:
                yield KEEPALIVE_FRAME
                quiet_since = time.monotonic()
            await anyio.sleep(POLL_INTERVAL_S)
    except APIError as exc:
        yield error_frame(exc)
    except Exception as exc:  # logged; the status line is sent, so the client learns of it from one frame
        logger.error("event stream of %s failed", job_id, exc_info=exc, extra={"job_id": job_id})
        yield error_frame(ServerError("The server had an error while streaming the job's events; reconnect."))
    finally:
        release()


def poll(stores: Stores, job_id: str, project_id: str, after: str | None) -> tuple[str, Page[JobEventRecord]]:
    """Return the job's status, then the page of its events after `after`, oldest first (status read first)."""
    status = service.get_job(stores, job_id, project_id=project_id).status
    page = stores.metadata.list_events(job_id, project_id=project_id, after=after, limit=PAGE_SIZE, order="asc")
    return status, page


def event_frame(record: JobEventRecord) -> bytes:
    """One `data: <fine_tuning.job.event JSON>` frame, encoded as the list encodes its items."""
    return b"data: " + encode_json(FineTuningJobEvent.from_record(record)) + b"\n\n"

"""Job-list pages kept rendered per API process, served only while the project's jobs have not changed.

`GET /v1/fine_tuning/jobs` is what clients poll. Rendering a page costs the page query (21 rows of 19 columns)
and building and encoding 20 job objects; checking whether a page kept from before is still right costs one
indexed read of one number: `job_list_version`, which triggers on the jobs table change in the same
transaction as any change to the project's jobs (migration 0012). So a request reads that number first, and
answers the kept page when it was rendered under the same number; otherwise it renders the page, keeps it
under the number read *before* the page, and answers it.

Why that order is exact: a page read after the number is at least as new as the number. If a change committed
in between, the page shows it and the number kept with it is already stale, so no later request takes it
(they read the newer number). A page is never kept under a number newer than what it shows. Every API process
reads the number from the database on every request, so there is nothing to invalidate across processes and
no window in which another process's write is missed.

Where a read is a round trip (PostgreSQL), the version reads of concurrent requests are coalesced: a request
waits for the next read that *starts* after it arrived, and that one read (one statement for all the projects
waiting) answers every request that was waiting when it started. Joining a read already under way could miss a
change committed after that read began but before the request arrived; waiting for the next one cannot.

Memory: at most `job_list_cache_bytes` of rendered pages per process (least recently used first out; 0 turns
the cache off).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import msgspec

from tunewright.api.dependencies import store_read
from tunewright.api.fine_tuning.schemas import FineTuningJob
from tunewright.api.schemas import CursorPage

if TYPE_CHECKING:
    from tunewright.storage.base import Stores

PageKey = tuple[str, str | None, int, bytes | None]
"""(project id, `after`, `limit`, the metadata filter encoded with sorted keys or None)."""

_encoder = msgspec.json.Encoder()


class JobPageCache:
    """Rendered job-list pages by `PageKey`, each with the `job_list_version` it was rendered under."""

    def __init__(self, max_bytes: int) -> None:
        """Keep at most `max_bytes` of page bodies (0: keep none)."""
        self.max_bytes = max_bytes
        self._pages: OrderedDict[PageKey, tuple[int, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: PageKey, version: int) -> bytes | None:
        """The page kept under `key` if it was rendered under `version`."""
        with self._lock:
            kept = self._pages.get(key)
            if kept is None or kept[0] != version:
                return None
            self._pages.move_to_end(key)
            return kept[1]

    def put(self, key: PageKey, version: int, body: bytes) -> None:
        """Keep `body` under `key` for `version`, dropping the least recently used pages beyond the budget."""
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._pages.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._pages[key] = (version, body)
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._pages.popitem(last=False)
                self._bytes -= len(dropped)

    @property
    def size_bytes(self) -> int:
        """Bytes of page bodies kept now."""
        return self._bytes


def page_key(project_id: str, after: str | None, limit: int, metadata: dict[str, str] | None) -> PageKey:
    """The cache key of a list request."""
    filters = None if metadata is None else _encoder.encode(dict(sorted(metadata.items())))
    return (project_id, after, limit, filters)


def render_page(
    stores: Stores, project_id: str, after: str | None, limit: int, metadata: dict[str, str] | None
) -> bytes:
    """The JSON body of one page of the project's jobs, read from the database."""
    page = stores.metadata.list_jobs(project_id=project_id, after=after, limit=limit, metadata=metadata)
    return _encoder.encode(CursorPage(data=[FineTuningJob.from_listing(r) for r in page.items], has_more=page.has_more))


class VersionReads:
    """Job-list version reads, coalesced across the requests of this process (see the module docstring).

    Used from the event loop only: the waiting requests and the read under way are the loop's state; the read
    itself runs on the default executor.
    """

    def __init__(self, stores: Stores) -> None:
        """Read through `stores.metadata.job_list_versions`."""
        self._stores = stores
        self._waiting: dict[str, list[asyncio.Future[int]]] = {}
        self._reading = False

    async def read(self, project_id: str) -> int:
        """The project's job-list version, read after this call began."""
        if not self._stores.metadata.reads_wait_on_network:
            return self._stores.metadata.job_list_versions([project_id])[project_id]  # inline: cheaper than any hop
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._waiting.setdefault(project_id, []).append(future)
        if not self._reading:
            self._start(loop)
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting, {}
        self._reading = True
        call = contextvars.copy_context().run
        done = loop.run_in_executor(None, call, self._stores.metadata.job_list_versions, list(batch))
        done.add_done_callback(lambda read: self._finish(loop, batch, read))

    def _finish(
        self, loop: asyncio.AbstractEventLoop, batch: dict[str, list[asyncio.Future[int]]], read: asyncio.Future[Any]
    ) -> None:
        self._reading = False
        error = read.exception()
        for project_id, futures in batch.items():
            for future in futures:
                if future.done():  # its request was cancelled meanwhile
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(read.result()[project_id])
        if self._waiting:
            self._start(loop)


async def job_page(
    stores: Stores,
    cache: JobPageCache,
    versions: VersionReads,
    *,
    project_id: str,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None,
) -> bytes:
    """The page's JSON body: kept, if the project's jobs have not changed since it was rendered, else rendered now.

    Raises what `list_jobs` raises (an `after` that names no job of the project).
    """
    page = {"project_id": project_id, "after": after, "limit": limit, "metadata": metadata}
    if cache.max_bytes == 0:
        return await store_read(stores, render_page, stores=stores, **page)
    version = await versions.read(project_id)  # before the page: see the module docstring
    key = page_key(project_id, after, limit, metadata)
    body = cache.get(key, version)
    if body is None:
        body = await store_read(stores, render_page, stores=stores, **page)
        cache.put(key, version, body)
    return body

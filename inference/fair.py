"""Fair shares across projects: one project's many rows or requests do not hold back everyone else's.

``FairQueue`` keeps a FIFO per key (a project id) and counts each key's items in service (taken and not yet
done). The next item taken is the oldest of the key with the fewest in service, keys with as many taken in
turn: a project that queued 2,000 rows while another's one row waits gets the next free place only after that
one. The local engine's scheduler admits its waiting rows to free batch places in this order
(``inference/scheduler.py``); the remote engine runs each server's requests on a ``FairPool``: at most
``workers`` threads, hence connections, taking queued work in the same order.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

T = TypeVar("T")

logger = logging.getLogger(__name__)


class FairQueue(Generic[T]):
    """Items waiting per key, taken fewest-in-service first. Not thread-safe: its owner holds a lock."""

    def __init__(self, key: Callable[[T], str]) -> None:
        """Start empty; ``key`` names an item's key (its project)."""
        self._key = key
        # Insertion-ordered: among keys with as many in service, the first is served; it then moves to the back.
        self._queues: dict[str, collections.deque[T]] = {}
        self._serving: collections.Counter[str] = collections.Counter()
        self._size = 0

    def __len__(self) -> int:
        """Items waiting under every key."""
        return self._size

    def extend(self, items: Iterable[T]) -> None:
        """Queue ``items``, each after the older items of its key."""
        for item in items:
            self._queues.setdefault(self._key(item), collections.deque()).append(item)
            self._size += 1

    def pop(self) -> T:
        """Take the oldest item of the key with the fewest items in service; it is in service until ``done``.

        Raises:
            IndexError: the queue is empty.
        """
        if not self._queues:
            raise IndexError("pop from an empty FairQueue")
        key = min(self._queues, key=self._serving.__getitem__)  # min keeps the first of equals: the turn order
        queue = self._queues.pop(key)
        item = queue.popleft()
        if queue:
            self._queues[key] = queue
        self._size -= 1
        self._serving[key] += 1
        return item

    def take(self, count: int) -> list[T]:
        """Pop up to ``count`` items."""
        return [self.pop() for _ in range(min(count, self._size))]

    def done(self, item: T) -> None:
        """An item taken earlier left service (its place is free)."""
        key = self._key(item)
        self._serving[key] -= 1
        if self._serving[key] <= 0:
            del self._serving[key]

    def remove(self, predicate: Callable[[T], bool]) -> list[T]:
        """Take out every waiting item ``predicate`` holds for (keys keep their place in the turn)."""
        removed = []
        for key, queue in list(self._queues.items()):
            keep: collections.deque[T] = collections.deque()
            for item in queue:
                (removed if predicate(item) else keep).append(item)
            if keep:
                self._queues[key] = keep
            else:
                del self._queues[key]
        self._size -= len(removed)
        return removed

    def clear(self) -> list[T]:
        """Take out every waiting item and forget those in service."""
        self._serving.clear()
        return self.remove(lambda _: True)


class FairPool(Generic[T]):
    """Runs ``work(item)`` for queued items on at most ``workers`` threads, taking items in ``FairQueue`` order.

    Threads start when work arrives and no thread is free, and end when the queue is empty: an idle pool holds
    none. ``work`` handles its own failures (one that escapes is logged).
    """

    def __init__(self, work: Callable[[T], None], *, key: Callable[[T], str], workers: int, name: str) -> None:
        """Start with no thread; ``key`` names an item's key (its project)."""
        self._work = work
        self._workers = workers
        self._name = name
        self._cond = threading.Condition()
        self._queue: FairQueue[T] = FairQueue(key)
        self._threads = 0
        self._started = 0
        self._closed = False

    def put(self, item: T) -> None:
        """Queue ``item``; start a thread if the pool has room for one.

        Raises:
            RuntimeError: the pool is closed.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("the pool is closed")
            self._queue.extend([item])
            if self._threads >= self._workers:
                return  # a running thread takes it when it is done with its item
            self._threads += 1
            self._started += 1
            name = f"{self._name}-{self._started}"
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def running(self) -> int:
        """Threads the pool runs now."""
        with self._cond:
            return self._threads

    def close(self) -> list[T]:
        """Refuse new items; return the queued ones (items already taken run to their end)."""
        with self._cond:
            self._closed = True
            return self._queue.clear()

    def _run(self) -> None:
        item: T | None = None
        while True:
            with self._cond:
                if item is not None:
                    self._queue.done(item)
                if not self._queue:
                    self._threads -= 1
                    return
                item = self._queue.pop()
            try:
                self._work(item)
            except Exception:
                logger.exception("%s: work failed", self._name)

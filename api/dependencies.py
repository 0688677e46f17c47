"""What Litestar's dependency injection hands to handlers: the stores, the settings, the engine, the metrics.

Handlers declare them by name and type (`stores: AppStores`), never reach into `request.app.state`. The values
are fixed when the app is built, so each provider is cached for the app's life: resolving one costs a lookup.
The caller (`principal: Caller`) is provided in api/auth.py, from what the route's guard resolved.
"""

from __future__ import annotations

import asyncio
import contextvars
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from litestar.di import NamedDependency, Provide

from tunewright.api.metrics import Metrics
from tunewright.inference.engine import InferenceEngine
from tunewright.storage.base import Stores
from tunewright.storage.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

AppStores = NamedDependency[Stores]
"""`stores: AppStores`: the blob store, metadata store and job queue of this process."""
AppSettings = NamedDependency[Settings]
"""`settings: AppSettings`: the settings the process started with."""
AppEngine = NamedDependency[InferenceEngine]
"""`engine: AppEngine`: what generates completions (built on its first request)."""
AppMetrics = NamedDependency[Metrics]
"""`metrics: AppMetrics`: the process's Prometheus collectors."""
TrainerStatusFile = NamedDependency[Path | None]
"""`trainer_status: TrainerStatusFile`: the status file of the `serve` supervising the trainers, if any."""


def _constant(value: Any) -> Callable[[], Any]:
    def provide() -> Any:
        return value

    return provide


def providers(**values: Any) -> dict[str, Provide]:
    """One cached provider per named value (`stores=…, settings=…`), for `Litestar(dependencies=…)`."""
    return {name: Provide(_constant(value), use_cache=True, sync_to_thread=False) for name, value in values.items()}


async def store_read(stores: Stores, read: Callable[..., T], /, **kwargs: Any) -> T:
    """Call `read(**kwargs)`, a metadata read, from an async handler on a hot path.

    Inline when the database is SQLite (cheaper than any hop); on the default executor's threads when each read
    is a round trip (PostgreSQL), so the event loop serves other requests while this one waits on the server.
    """
    if not stores.metadata.reads_wait_on_network:
        return read(**kwargs)
    call = partial(contextvars.copy_context().run, read, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(None, call)

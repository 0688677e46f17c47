"""Background housekeeping in the API process, every `sweep_every_s` seconds: sweeps and spend alerts.

The sweeps are storage/sweeps.py's; the alerts those that spend without requests (training, storage) crossed
(api/spend/quota.py).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from tunewright.api.spend.quota import check_all_alerts
from tunewright.storage.sweeps import sweep_once

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from litestar import Litestar

    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def sweeper_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Run `sweep_once` every `sweep_every_s` seconds while the app serves."""
    settings: Settings = app.state.settings
    stores: Stores = app.state.stores

    async def loop() -> None:
        # The first pass waits one period: `tunewright serve` has just swept, before starting its workers.
        while True:
            await anyio.sleep(settings.sweep_every_s)
            await anyio.to_thread.run_sync(sweep_once, stores, settings)
            await anyio.to_thread.run_sync(check_all_alerts, stores, settings)

    async with anyio.create_task_group() as group:
        group.start_soon(loop)
        yield
        group.cancel_scope.cancel()

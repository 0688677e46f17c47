"""The ASGI entry point granian loads in each worker: `tunewright.api.asgi:create_app_from_env` (a factory).

It is an entry point, so it reads the environment: `TUNEWRIGHT_*` variables and `TUNEWRIGHT_CONFIG`, which
`tunewright serve` sets for its workers, the trainers' status file that `serve` names there, and
prometheus_client's `PROMETHEUS_MULTIPROC_DIR`, where the workers share their counters (api/metrics.py). The
schema must already be migrated (`serve` and `migrate` do it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tunewright.api.app import create_app
from tunewright.storage.registry import open_stores
from tunewright.storage.settings import load_settings
from tunewright.storage.supervision import METRICS_DIR_ENV, STATUS_FILE_ENV

if TYPE_CHECKING:
    from litestar import Litestar


def create_app_from_env() -> Litestar:
    """Build the API from the environment's settings; the stores close when the app shuts down."""
    settings = load_settings(os.environ)
    stores = open_stores(settings)
    status_file = os.environ.get(STATUS_FILE_ENV)
    app = create_app(
        settings,
        stores,
        trainer_status=Path(status_file) if status_file else None,
        metrics_dir=os.environ.get(METRICS_DIR_ENV) or None,
    )
    app.on_shutdown.append(stores.close)
    return app

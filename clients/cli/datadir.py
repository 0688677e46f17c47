"""Opening the data a command works on: the data directory, the stores, the migrated schema."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from tunewright.storage.disk import make_private_dir, warn_if_shared
from tunewright.storage.registry import open_stores

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings


class MigratedStores:
    """Stores whose schema is current, and the migrations that opening them applied."""

    def __init__(self, stores: Stores, applied: list[str]) -> None:
        """Hold `stores` and the names of the migrations just applied."""
        self.stores = stores
        self.applied = applied


@contextmanager
def open_data(settings: Settings) -> Iterator[MigratedStores]:
    """Create the data directory (0700) if missing, open the stores, migrate, and close them on exit.

    Every command that touches storage goes through here, so any command works on a fresh data dir.
    """
    make_private_dir(settings.data_path)
    warn_if_shared(settings.data_path)
    stores = open_stores(settings)
    try:
        applied = stores.metadata.migrate()
        yield MigratedStores(stores, applied)
    finally:
        stores.close()

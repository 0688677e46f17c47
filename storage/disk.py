"""The local disk under the data: private modes for what the service creates.

The data dir, the local blob store and the SQLite files hold every tenant's data, so what the service creates
there is readable by its own user only (folders 0700, files 0600), whatever the umask. Adapter folders handed
to an inference server running as another user are the one deliberate exception (`inference/adapters.py`).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dir(path: Path) -> None:
    """Create the folder `path`, and its missing parents, each 0700; an existing folder is left as it is.

    (`Path.mkdir(parents=True, mode=…)` applies the mode to the last folder only.)

    Raises:
        FileExistsError: `path` or a parent exists and is not a folder.
        OSError: a folder could not be created.
    """
    if path.is_dir():
        return
    if path.parent != path:
        make_private_dir(path.parent)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise  # a file is in the way; a folder made concurrently is fine


def create_private_file(path: Path) -> None:
    """Create the empty file `path` as 0600 unless it exists (an existing file keeps its mode and content)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    os.close(fd)


def warn_if_shared(path: Path) -> None:
    """Log a warning when an existing data folder is open to other users (it predates the private modes)."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        logger.warning(
            "%s is readable by other users (mode %03o): it holds every tenant's data; `chmod 700` it", path, mode
        )

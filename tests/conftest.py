"""Shared fixtures. Each area's fixtures live in tests/fixtures/<area>.py, loaded as plugins."""

from __future__ import annotations

import gc
import os

import pytest

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = [
    "fixtures.s3",
    "fixtures.postgres",
    "fixtures.pg_cluster",
    "fixtures.stores",
    "fixtures.queue",
    "fixtures.app",
    "fixtures.server",
    "fixtures.models",
    "fixtures.training",
    "fixtures.disk",
    "fixtures.webhooks",
    "fixtures.redis",
    "fixtures.browser",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a test marked `slow` first, in their order, then the rest: under `-n 2` (pytest-xdist, one file
    per process at a time, in this order: `--no-loadscope-reorder`) a long file started last would leave the other
    process idle while it runs."""
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what collection imported (torch, transformers, the app's modules) out of the garbage collector's reach.

    Every test builds apps and clients whose object graphs trigger full collections; each would otherwise walk
    millions of long-lived objects again.
    """
    gc.freeze()

"""Shared fixtures. Each area's fixtures live in tests/fixtures/<area>.py, loaded as plugins."""

from __future__ import annotations

import os

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

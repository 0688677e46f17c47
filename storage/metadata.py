"""SQLMetadataStore: the `MetadataStore` protocol over a `Database` (SQLite or PostgreSQL).

Written once against `storage/db.py`; the dialects differ only there and in `storage/sql/`. Each feature
lives in its own mixin module: tenants, files, jobs, exports, models, usage, webhooks, rate limits, the audit
log, spend, idempotency keys.
"""

from __future__ import annotations

from tunewright.storage.metadata_audit import AuditMixin
from tunewright.storage.metadata_exports import ExportsMixin
from tunewright.storage.metadata_files import FilesMixin
from tunewright.storage.metadata_idempotency import IdempotencyMixin
from tunewright.storage.metadata_jobs import JobsMixin
from tunewright.storage.metadata_limits import LimitsMixin
from tunewright.storage.metadata_models import ModelsMixin
from tunewright.storage.metadata_spend import SpendMixin
from tunewright.storage.metadata_tenants import TenantsMixin
from tunewright.storage.metadata_usage import UsageMixin
from tunewright.storage.metadata_webhooks import WebhooksMixin


class SQLMetadataStore(
    TenantsMixin,
    FilesMixin,
    JobsMixin,
    ExportsMixin,
    ModelsMixin,
    UsageMixin,
    WebhooksMixin,
    LimitsMixin,
    AuditMixin,
    SpendMixin,
    IdempotencyMixin,
):
    """Every metadata feature over one database.

    Tenants, files, uploads, jobs, exports, models, permissions, usage, webhooks, rate and spend limits, the audit
    log and idempotency keys.
    Every tenant method is scoped by `project_id`: another project's object is `NotFound` and never listed.
    Lists order by `(created_at, id)` and fetch `limit + 1` rows to tell `has_more`.
    """

"""API keys: minting a secret, the form it is stored in (a SHA-256 digest) and the form it is shown in.

A secret is shown once, when it is made; the database holds only `hash_secret(secret)` and `redact(secret)`.
Authentication (api/auth.py) looks a key up by its digest.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Literal

from tunewright.storage.ids import new_id
from tunewright.storage.records import ApiKeyRecord

KeyKind = Literal["project", "service_account", "admin"]


def new_secret_key(admin: bool = False) -> str:
    """Return a new secret API key: `sk-proj-…` or `sk-admin-…` with 256 bits of entropy."""
    prefix = "sk-admin-" if admin else "sk-proj-"
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """Return the stored form of a secret key."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def redact(secret: str) -> str:
    """Return the display form of a secret key (`sk-proj-abc...wxyz`)."""
    return f"{secret[:12]}...{secret[-4:]}"


def mint_api_key(
    *,
    organization_id: str,
    project_id: str | None,
    name: str,
    kind: KeyKind,
    service_account_id: str | None = None,
    now: int | None = None,
) -> tuple[ApiKeyRecord, str]:
    """Make a new key: the record to store (digest and redacted form only) and the secret, to show once.

    Args:
        organization_id: The organization the key belongs to.
        project_id: Its project; None for an organization admin key.
        name: A display name.
        kind: `project`, `service_account` or `admin` (an admin key's secret starts `sk-admin-`).
        service_account_id: The service account a `service_account` key belongs to.
        now: Creation time (unix seconds); now by default.
    """
    secret = new_secret_key(admin=kind == "admin")
    record = ApiKeyRecord(
        id=new_id("key"),
        organization_id=organization_id,
        project_id=project_id,
        name=name,
        kind=kind,
        secret_hash=hash_secret(secret),
        redacted_value=redact(secret),
        created_at=int(time.time()) if now is None else now,
        service_account_id=service_account_id,
    )
    return record, secret

"""Standard Webhooks signatures, as OpenAI signs its webhooks and `client.webhooks.unwrap` checks them.

A secret is `whsec_` + base64 of 32 random bytes. Each attempt carries `webhook-id` (the delivery's id, the same
on every retry), `webhook-timestamp` (unix seconds of this attempt: receivers refuse stale ones) and
`webhook-signature`: space-separated `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per secret in
force, so a receiver holding either the new or the old secret during a rotation's grace accepts it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret


def new_secret() -> str:
    """A fresh signing secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one attempt under one secret."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(webhook_id: str, timestamp: int, body: bytes, keys: Sequence[str]) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt, signed with every secret in `keys`."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(key, webhook_id, timestamp, body) for key in keys),
    }

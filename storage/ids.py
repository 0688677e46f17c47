"""Identifiers: every id in Tunewright is made here.

The random part is time-ordered (48 bits of milliseconds, then 80 random bits, Crockford base32, as ULID), so
ordering by `(created_at, id)` is stable and follows creation order even inside one second.
"""

from __future__ import annotations

import secrets
import string
import threading
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_ALNUM = string.ascii_letters + string.digits

PREFIXES: dict[str, str] = {
    "file": "file-",
    "upload": "upload_",
    "part": "part_",
    "job": "ftjob-",
    "event": "ftevent-",
    "checkpoint": "ftckpt_",
    "permission": "cp_",
    "chat": "chatcmpl-",
    "completion": "cmpl-",
    "org": "org-",
    "project": "proj_",
    "key": "key_",
    "service_account": "svc_acct_",
    "request": "req_",
    "usage": "usage_",
    "webhook_endpoint": "whe_",
    "webhook_delivery": "wh_",
    "webhook_event": "evt_",
    "audit_log": "audit_log-",
    "spend_alert": "alert_",
    "export": "ftexp-",
}


_lock = threading.Lock()
_last = [0, 0]  # last millisecond and random part handed out by this process


def _ulid(now_ms: int | None = None) -> str:
    """Return a 26-character time-ordered identifier (lower-case Crockford base32).

    Monotonic within a process: inside one millisecond the random part is incremented, so ids made in a row
    sort in the order they were made.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _lock:
        if ms <= _last[0]:
            ms, randomness = _last[0], _last[1] + 1
        else:
            randomness = secrets.randbits(79)  # headroom so increments never overflow 80 bits
        _last[0], _last[1] = ms, randomness
    value = (ms << 80) | randomness
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(kind: str) -> str:
    """Return a fresh id of `kind` (`"file"`, `"job"`, …) with OpenAI's prefix."""
    return PREFIXES[kind] + _ulid()


def new_model_slot() -> str:
    """Return the 8 alphanumerics that end a fine-tuned model name (`ft:<base>:<org>:<suffix>:<slot>`)."""
    return "".join(secrets.choice(_ALNUM) for _ in range(8))


def rate_limit_id(model: str) -> str:
    """Return the id of a project's rate limit on `model` (OpenAI's `rl-<model>`, the same in every project)."""
    return "rl-" + model


def new_request_id() -> str:
    """Return a request id for `x-request-id`."""
    return "req_" + secrets.token_hex(16)

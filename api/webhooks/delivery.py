"""One delivery attempt over HTTP, and when the next one is due.

An attempt resolves and checks the target (api/webhooks/targets.py), then POSTs the event to a checked address
with the original `Host` and TLS server name, signed for this attempt. It follows no redirect (a 3xx is a
failure: a redirect could lead anywhere), reads no response body, uses no proxy from the environment, and keeps
no connection alive (a pooled connection would be reused for another name on the same address). The whole
attempt, resolution included, is bounded by `TUNEWRIGHT_WEBHOOK_TIMEOUT_S`. Any 2xx acknowledges the event.
"""

from __future__ import annotations

import logging
import random
import time
from enum import StrEnum
from typing import TYPE_CHECKING

import anyio
import httpx
import msgspec

from tunewright.api.errors import echo
from tunewright.api.webhooks.signing import signature_headers
from tunewright.api.webhooks.targets import RefusedTarget, pin

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tunewright.api.webhooks.targets import PinnedTarget, Resolver

logger = logging.getLogger(__name__)

USER_AGENT = "Tunewright-Webhooks/1"


class Outcome(StrEnum):
    """How an attempt ended; the label of `tunewright_webhook_delivery_attempts_total`."""

    SUCCEEDED = "succeeded"
    HTTP_ERROR = "http_error"
    NETWORK_ERROR = "network_error"
    REFUSED = "refused"


class AttemptResult(msgspec.Struct, kw_only=True, frozen=True):
    """What one attempt came to: the endpoint's status code, or why there was none."""

    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    duration_ms: int = 0


def http_client(timeout_s: float) -> httpx.AsyncClient:
    """The client attempts go through: no redirects, no environment proxies, no kept-alive connections."""
    return httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout_s),
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"user-agent": USER_AGENT},
    )


async def send_attempt(
    client: httpx.AsyncClient,
    url: str,
    *,
    webhook_id: str,
    body: bytes,
    keys: Sequence[str],
    allow_private: bool,
    resolver: Resolver,
    timeout_s: float,
) -> AttemptResult:
    """POST `body` to `url` once, signed with `keys`; never raises for what the target does."""
    started = time.monotonic()

    def result(outcome: Outcome, status_code: int | None = None, error: str | None = None) -> AttemptResult:
        elapsed = int((time.monotonic() - started) * 1000)
        return AttemptResult(outcome=outcome, status_code=status_code, error=error, duration_ms=elapsed)

    try:
        with anyio.fail_after(timeout_s):
            targets = await pin(url, allow_private=allow_private, resolver=resolver)
            headers = {
                "content-type": "application/json",
                **signature_headers(webhook_id, int(time.time()), body, keys),
            }
            status = await _post_first_reachable(client, targets, body, headers)
    except RefusedTarget as exc:
        return result(Outcome.REFUSED, error=f"refused: {echo(exc)}")
    except TimeoutError:
        return result(Outcome.NETWORK_ERROR, error=f"timed out after {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return result(Outcome.NETWORK_ERROR, error=echo(str(exc) or type(exc).__name__))
    if 200 <= status < 300:
        return result(Outcome.SUCCEEDED, status)
    return result(Outcome.HTTP_ERROR, status, f"the endpoint answered {status}")


async def _post_first_reachable(
    client: httpx.AsyncClient, targets: Sequence[PinnedTarget], body: bytes, headers: dict[str, str]
) -> int:
    """POST to the checked addresses in order until one accepts the connection; return its status code."""
    failure: httpx.ConnectError | None = None
    for target in targets:
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
        request = client.build_request(
            "POST",
            target.connect_url,
            content=body,
            headers={**headers, "host": target.host_header},
            extensions=extensions,
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc
            continue
        await response.aclose()  # the body is not read: an endpoint cannot make us hold gigabytes
        return response.status_code
    assert failure is not None
    raise failure


def next_delay(attempts: int, *, base_s: float, max_s: float) -> float:
    """Seconds before the next attempt after `attempts` failed ones: exponential, capped, with jitter.

    The ceiling doubles per attempt (`base_s`, twice that, …, at most `max_s`); the delay is drawn between
    half of it and all of it, so endpoints that fail together are not retried together.
    """
    ceiling = min(max_s, base_s * 2 ** min(attempts - 1, 60))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret

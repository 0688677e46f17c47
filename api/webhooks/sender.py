"""The outbox sender: runs in every API process and sends the deliveries jobs wrote (storage/outbox.py).

Each sender leases due deliveries for one attempt at a time (`claim_webhook_deliveries`: SKIP LOCKED on
PostgreSQL, BEGIN IMMEDIATE on SQLite), so several API processes share the outbox and none sends a delivery
another holds. Up to `TUNEWRIGHT_WEBHOOK_CONCURRENCY` attempts run at once per process, on the event loop
(httpx), and a slow endpoint holds only its own place. A failed attempt is retried after an exponential,
jittered delay (api/webhooks/delivery.py) until `TUNEWRIGHT_WEBHOOK_RETRY_WINDOW_S` after the event (24 h), with
the same `webhook-id`; then the delivery is `failed`. A sender that dies mid-attempt leaves a lease that expires,
and another sender retries the delivery.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from tunewright.api.webhooks.delivery import AttemptResult, Outcome, http_client, next_delay, send_attempt
from tunewright.api.webhooks.targets import system_resolver
from tunewright.storage.errors import Unavailable
from tunewright.storage.records import WebhookDeliveryStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import httpx
    from litestar import Litestar

    from tunewright.api.metrics import Metrics
    from tunewright.api.webhooks.targets import Resolver
    from tunewright.storage.base import Stores
    from tunewright.storage.records import ClaimedDelivery
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)

KEEP_ATTEMPTS = 50
"""Attempts a delivery's log keeps (the latest ones); the count of all attempts is kept besides."""


class WebhookSender:
    """Sends due deliveries of every project until cancelled.

    Args:
        stores: Where the outbox lives.
        settings: The `webhook_*` settings.
        metrics: Counts attempts and ended deliveries by outcome (optional, for tools and tests).
        resolver: Resolves a target's host (tests pass their own).
        clock: Wall-clock seconds for leases and retry times, compared across processes.
    """

    def __init__(
        self,
        stores: Stores,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stores = stores
        self._settings = settings
        self._metrics = metrics
        self._resolver = resolver
        self._clock = clock
        self._name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._claims = 0
        self._in_flight = 0
        self._wake: anyio.Event | None = None  # made in run(): an event belongs to the loop that waits on it
        # An attempt is bounded by the timeout; the lease leaves room to record it before another sender may retry.
        self._lease_s = settings.webhook_timeout_s + 10

    async def run(self) -> None:
        """Claim and send until cancelled; a database outage is logged and waited out."""
        capacity = self._settings.webhook_concurrency
        self._wake = anyio.Event()
        async with http_client(self._settings.webhook_timeout_s) as client, anyio.create_task_group() as group:
            while True:
                claimed: list[ClaimedDelivery] = []
                if self._in_flight < capacity:
                    claimed = await self._claim(capacity - self._in_flight)
                for delivery in claimed:
                    self._in_flight += 1
                    group.start_soon(self._deliver, client, delivery)
                if not claimed or self._in_flight >= capacity:
                    with anyio.move_on_after(self._settings.webhook_poll_s):
                        await self._wake.wait()
                    self._wake = anyio.Event()  # set by an attempt that ended: a place is free

    async def _claim(self, limit: int) -> list[ClaimedDelivery]:
        self._claims += 1
        owner = f"{self._name}:{self._claims}"
        try:
            return await anyio.to_thread.run_sync(self._claim_sync, owner, limit)
        except Unavailable as exc:  # a database outage: the next poll tries again
            logger.warning("could not claim webhook deliveries (%s); trying again shortly", exc)
        except Exception:  # a bug must not stop the sender for good
            logger.exception("could not claim webhook deliveries")
        return []

    def _claim_sync(self, owner: str, limit: int) -> list[ClaimedDelivery]:
        return self._stores.metadata.claim_webhook_deliveries(
            owner, now=self._clock(), lease_s=self._lease_s, limit=limit
        )

    async def _deliver(self, client: httpx.AsyncClient, claimed: ClaimedDelivery) -> None:
        """One attempt of one delivery, then its record; the place is freed whatever happens."""
        try:
            settings = self._settings
            result = await send_attempt(
                client,
                claimed.url,
                webhook_id=claimed.delivery.id,
                body=claimed.delivery.payload.encode(),
                keys=claimed.secrets,
                allow_private=settings.webhook_allow_private,
                resolver=self._resolver,
                timeout_s=settings.webhook_timeout_s,
            )
            await anyio.to_thread.run_sync(self._record, claimed, result)
        except anyio.get_cancelled_exc_class():
            # The app is stopping mid-attempt: give the delivery back now rather than when the lease expires, so
            # another API process (or this one, restarted) sends it at once, with the same webhook-id.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._release, claimed)
            raise
        except Exception:  # the lease expires and another attempt follows: log, never stop the sender
            logger.exception("webhook delivery %s: the attempt could not be recorded", claimed.delivery.id)
        finally:
            self._in_flight -= 1
            if self._wake is not None:
                self._wake.set()

    def _release(self, claimed: ClaimedDelivery) -> None:
        try:
            self._stores.metadata.release_webhook_delivery(claimed)
        except Exception:  # the lease then expires on its own
            logger.exception("webhook delivery %s: could not give the lease back", claimed.delivery.id)

    def _record(self, claimed: ClaimedDelivery, result: AttemptResult) -> None:
        """Store the attempt and what follows it: done, the next attempt's time, or given up."""
        settings = self._settings
        delivery = claimed.delivery
        now = self._clock()
        attempts = delivery.attempts + 1
        next_attempt_at: float | None = None
        if result.outcome == Outcome.SUCCEEDED:
            status = WebhookDeliveryStatus.SUCCEEDED
        else:
            due = now + next_delay(attempts, base_s=settings.webhook_retry_base_s, max_s=settings.webhook_retry_max_s)
            if due > delivery.created_at + settings.webhook_retry_window_s:
                status = WebhookDeliveryStatus.FAILED
            else:
                status, next_attempt_at = WebhookDeliveryStatus.PENDING, due
        attempt = {
            "attempted_at": int(now),
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": result.duration_ms,
        }
        recorded = self._stores.metadata.finish_webhook_attempt(
            claimed,
            status=status,
            next_attempt_at=next_attempt_at,
            finished_at=None if status == WebhookDeliveryStatus.PENDING else int(now),
            attempt=attempt,
            keep_attempts=KEEP_ATTEMPTS,
        )
        extra = {"webhook_delivery_id": delivery.id, "project_id": delivery.project_id}
        if not recorded:
            logger.info("webhook delivery %s: lease lost or endpoint deleted; attempt not recorded", delivery.id)
            return
        if status == WebhookDeliveryStatus.FAILED:
            logger.warning("webhook delivery %s given up after %d attempts", delivery.id, attempts, extra=extra)
        if self._metrics is not None:
            self._metrics.webhook_attempts.labels(result.outcome.value).inc()
            if status != WebhookDeliveryStatus.PENDING:
                self._metrics.webhook_deliveries.labels(status.value).inc()


@contextlib.asynccontextmanager
async def webhook_sender_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Run a `WebhookSender` while the app serves."""
    sender = WebhookSender(app.state.stores, app.state.settings, app.state.metrics)
    async with anyio.create_task_group() as group:
        group.start_soon(sender.run)
        yield
        group.cancel_scope.cancel()

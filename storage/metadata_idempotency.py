"""Idempotency keys in the SQL metadata store: the claim on a key, its lease, the answer kept for retries.

One row per project and key; its primary key is the claim. `claim_idempotency_key` inserts the row, or takes
over one whose claim lapsed or whose answer expired, in one transaction: of concurrent requests with one key, in
any number of API processes, exactly one holds the claim (PostgreSQL: the unique index makes a concurrent insert
wait for the first to commit; SQLite: `BEGIN IMMEDIATE`). Every later change is a compare-and-set on the claim's
`token`, so a request whose lease lapsed and was taken over can neither record an answer nor drop the new claim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from tunewright.storage.metadata_base import SQLStoreBase
from tunewright.storage.records import IdempotencyRecord
from tunewright.storage.rows import from_row

if TYPE_CHECKING:
    from collections.abc import Sequence


class IdempotencyMixin(SQLStoreBase):
    """`MetadataStore` methods for idempotency keys."""

    def claim_idempotency_key(
        self, *, project_id: str, key: str, token: str, now: float, lease_s: float, ttl_s: int
    ) -> IdempotencyRecord:
        """Claim `key` for the request `token`, or return the row of the request that holds or answered it.

        The claim is taken when the key is new, when its holder's lease ended before `now` without an answer, or
        when its answer expired; it lasts `lease_s` (see `renew_idempotency_key`) and the answer is kept until
        `ttl_s` after `now`. The caller holds the claim when the returned record's `token` is its own; taking
        over a lapsed claim, the record keeps the `resource` (and its fingerprint) the holder noted, if it did.
        """
        names = {"project_id": project_id, "idempotency_key": key}
        params = {
            **names,
            "token": token,
            "created_at": int(now),
            "expires_at": int(now) + ttl_s,
            "lease_expires_at": now + lease_s,
            "now": now,
        }
        with self.database.transaction(immediate=True) as conn:
            claimed = conn.run("claim_idempotency_key", params).fetchone()
            if claimed is None:
                row = conn.run("get_idempotency_key", names).fetchone()
                return from_row(IdempotencyRecord, row)
        return IdempotencyRecord(
            **names,
            token=token,
            created_at=params["created_at"],
            expires_at=params["expires_at"],
            lease_expires_at=params["lease_expires_at"],
            fingerprint=claimed["fingerprint"],
            resource=claimed["resource"],
        )

    def get_idempotency_key(self, *, project_id: str, key: str) -> IdempotencyRecord | None:
        """The key's row, or None when no request holds or answered it."""
        with self.database.reading() as conn:
            row = conn.run("get_idempotency_key", {"project_id": project_id, "idempotency_key": key}).fetchone()
        return None if row is None else from_row(IdempotencyRecord, row)

    def renew_idempotency_key(self, *, project_id: str, key: str, token: str, lease_expires_at: float) -> bool:
        """Extend the claim `token` holds to `lease_expires_at`; False when it holds none (it lapsed or answered)."""
        params = {
            "project_id": project_id,
            "idempotency_key": key,
            "token": token,
            "lease_expires_at": lease_expires_at,
        }
        return self._held("renew_idempotency_key", params)

    def note_idempotency_resource(
        self, *, project_id: str, key: str, token: str, fingerprint: str, resource: str
    ) -> bool:
        """Record, with the request's fingerprint, the object the request `token` is about to commit.

        A request that dies after its commit and before its answer is kept leaves it for the retry that takes the
        claim over: that retry answers with the object instead of creating another. False when `token` no longer
        holds the claim.
        """
        params = {
            "project_id": project_id,
            "idempotency_key": key,
            "token": token,
            "fingerprint": fingerprint,
            "resource": resource,
        }
        return self._held("note_idempotency_resource", params)

    def complete_idempotency_key(
        self,
        *,
        project_id: str,
        key: str,
        token: str,
        fingerprint: str,
        status_code: int,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> bool:
        """Keep the answer of the request `token` for its retries; False when it no longer holds the claim."""
        params = {
            "project_id": project_id,
            "idempotency_key": key,
            "token": token,
            "fingerprint": fingerprint,
            "status_code": status_code,
            "headers": msgspec.json.encode([list(pair) for pair in headers]).decode(),
            "body": body,
        }
        return self._held("complete_idempotency_key", params)

    def release_idempotency_key(self, *, project_id: str, key: str, token: str) -> bool:
        """Drop the claim `token` holds without an answer, so a retry does the work; False when it held none."""
        return self._held("release_idempotency_key", {"project_id": project_id, "idempotency_key": key, "token": token})

    def _held(self, query: str, params: dict[str, object]) -> bool:
        with self.database.transaction(immediate=True) as conn:
            return conn.run(query, params).fetchone() is not None

    def delete_expired_idempotency_keys(self, *, now: float, limit: int) -> int:
        """Delete answers kept past their expiry, and lapsed claims past it; return how many (the sweeper)."""
        with self.database.transaction(immediate=True) as conn:
            return len(conn.run("delete_expired_idempotency_keys", {"now": now, "limit": limit}).fetchall())

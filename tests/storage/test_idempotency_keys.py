"""Idempotency keys over every database: one claim per project and key, leases, compare-and-set, expiry."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from tunewright.storage.ids import new_id

if TYPE_CHECKING:
    from tunewright.storage.metadata import SQLMetadataStore

LEASE_S = 30.0
TTL_S = 3600


def claim(store: SQLMetadataStore, token: str, now: float, key: str = "k1", project_id: str = "proj_a"):
    return store.claim_idempotency_key(
        project_id=project_id, key=key, token=token, now=now, lease_s=LEASE_S, ttl_s=TTL_S
    )


def complete(store: SQLMetadataStore, token: str, key: str = "k1", body: bytes = b'{"id": "x"}') -> bool:
    return store.complete_idempotency_key(
        project_id="proj_a",
        key=key,
        token=token,
        fingerprint="f1",
        status_code=200,
        headers=[("content-type", "application/json")],
        body=body,
    )


def test_the_first_claim_holds_the_key_and_the_others_see_it(metadata_store):
    now = time.time()
    first = claim(metadata_store, "t1", now)
    assert first.token == "t1"
    assert not first.answered
    seen = claim(metadata_store, "t2", now + 1)
    assert (seen.token, seen.answered, seen.lease_expires_at) == ("t1", False, first.lease_expires_at)
    assert claim(metadata_store, "t3", now, project_id="proj_b").token == "t3"  # another project's key


def test_only_the_holder_records_the_answer_which_then_answers_every_claim(metadata_store):
    now = time.time()
    claim(metadata_store, "t1", now)
    assert not complete(metadata_store, "t2")
    body = bytes(range(256))  # any bytes, kept as they are
    assert complete(metadata_store, "t1", body=body)
    assert not complete(metadata_store, "t1")  # once
    seen = claim(metadata_store, "t2", now + LEASE_S * 10)  # long after the lease: an answer does not lapse
    assert seen.token == "t1"
    assert seen.answered
    assert (seen.fingerprint, seen.status_code, seen.body) == ("f1", 200, body)
    assert seen.headers == [["content-type", "application/json"]]
    assert metadata_store.get_idempotency_key(project_id="proj_a", key="k1") == seen


def test_a_lapsed_claim_is_taken_over_and_its_old_holder_can_change_nothing(metadata_store):
    now = time.time()
    claim(metadata_store, "t1", now)
    assert claim(metadata_store, "t2", now + LEASE_S - 1).token == "t1"
    taken = claim(metadata_store, "t2", now + LEASE_S + 1)
    assert taken.token == "t2"
    assert not metadata_store.renew_idempotency_key(project_id="proj_a", key="k1", token="t1", lease_expires_at=now * 2)
    assert not complete(metadata_store, "t1")
    assert not metadata_store.release_idempotency_key(project_id="proj_a", key="k1", token="t1")
    assert complete(metadata_store, "t2")


def test_a_renewed_claim_is_not_taken_over(metadata_store):
    now = time.time()
    claim(metadata_store, "t1", now)
    renewed = metadata_store.renew_idempotency_key(
        project_id="proj_a", key="k1", token="t1", lease_expires_at=now + 3 * LEASE_S
    )
    assert renewed
    assert claim(metadata_store, "t2", now + 2 * LEASE_S).token == "t1"


def test_a_released_claim_frees_the_key(metadata_store):
    now = time.time()
    claim(metadata_store, "t1", now)
    assert metadata_store.release_idempotency_key(project_id="proj_a", key="k1", token="t1")
    assert metadata_store.get_idempotency_key(project_id="proj_a", key="k1") is None
    assert claim(metadata_store, "t2", now).token == "t2"
    assert complete(metadata_store, "t2")
    assert not metadata_store.release_idempotency_key(project_id="proj_a", key="k1", token="t2")  # answered: kept


def test_an_expired_answer_is_replaced_by_a_new_claim(metadata_store):
    now = time.time()
    claim(metadata_store, "t1", now)
    complete(metadata_store, "t1")
    fresh = claim(metadata_store, "t2", now + TTL_S + 1)
    assert fresh.token == "t2"
    stored = metadata_store.get_idempotency_key(project_id="proj_a", key="k1")
    assert stored is not None
    assert not stored.answered
    assert (stored.fingerprint, stored.body, stored.headers) == (None, None, None)


def test_of_concurrent_claims_exactly_one_holds_the_key(metadata_store):
    now = time.time()
    tokens = [new_id("file") for _ in range(8)]
    holders: list[str] = []
    barrier = threading.Barrier(len(tokens))

    def run(token: str) -> None:
        barrier.wait()
        holders.append(claim(metadata_store, token, now, key="race").token)

    threads = [threading.Thread(target=run, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(holders) == len(tokens)
    assert len(set(holders)) == 1
    assert holders[0] in tokens


def test_the_sweep_deletes_expired_answers_and_dead_claims_never_a_live_one(metadata_store):
    now = time.time()
    claim(metadata_store, "answered", now, key="answered")
    metadata_store.complete_idempotency_key(
        project_id="proj_a", key="answered", token="answered", fingerprint="f", status_code=201, headers=[], body=b""
    )
    claim(metadata_store, "dead", now, key="dead")
    claim(metadata_store, "live", now, key="live")
    later = now + TTL_S + 1
    assert metadata_store.renew_idempotency_key(
        project_id="proj_a", key="live", token="live", lease_expires_at=later + LEASE_S
    )
    assert metadata_store.delete_expired_idempotency_keys(now=now, limit=10) == 0
    assert metadata_store.delete_expired_idempotency_keys(now=later, limit=10) == 2
    remaining = [
        key for key in ("answered", "dead", "live") if metadata_store.get_idempotency_key(project_id="proj_a", key=key)
    ]
    assert remaining == ["live"]


def note(store: SQLMetadataStore, token: str, resource: str, key: str = "k1") -> bool:
    return store.note_idempotency_resource(
        project_id="proj_a", key=key, token=token, fingerprint="f1", resource=resource
    )


def test_the_object_a_lapsed_claim_noted_passes_to_the_claim_that_takes_it_over(metadata_store):
    now = time.time()
    claim(metadata_store, "t1", now)
    assert not note(metadata_store, "t2", "file-x")  # only the holder notes
    assert note(metadata_store, "t1", "file-x")
    assert claim(metadata_store, "t2", now + 1).token == "t1"  # held: nothing passes yet
    taken = claim(metadata_store, "t2", now + LEASE_S + 1)  # the holder died after its note
    assert (taken.token, taken.resource, taken.fingerprint, taken.answered) == ("t2", "file-x", "f1", False)
    assert not note(metadata_store, "t1", "file-y")  # the dead holder's claim is gone
    assert note(metadata_store, "t2", "file-z")
    assert complete(metadata_store, "t2")
    assert not note(metadata_store, "t2", "file-w")  # answered: nothing more is noted
    renewed = claim(metadata_store, "t3", now + LEASE_S + TTL_S + 10)  # the answer expired: a new request starts afresh
    assert (renewed.token, renewed.resource, renewed.fingerprint) == ("t3", None, None)

"""`find_usable_api_key(..., max_age_s=...)`: usable keys answered from memory, never past what a revocation allows.

A change made through a store object reaches its own cache at once; another store object on the same database
(another process, as far as caches go) sees it once its entry is `max_age_s` old. Run over SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from tunewright.storage.api_keys import new_secret_key
from tunewright.storage.ids import new_id
from tunewright.storage.metadata import SQLMetadataStore
from tunewright.storage.metadata_tenants import KEY_CACHE_TTL_S
from tunewright.storage.records import ApiKeyRecord, ServiceAccountRecord

if TYPE_CHECKING:
    from tunewright.storage.db import Database

LONG = 3600.0  # a cache age no test waits for: only an invalidation can end such an entry


def key_record(organization_id: str, project_id: str, secret_hash: str, **kw: Any) -> ApiKeyRecord:
    """A project key row (`secret_hash` is what lookups use)."""
    kind = "service_account" if kw.get("service_account_id") else "project"
    return ApiKeyRecord(
        id=new_id("key"),
        organization_id=organization_id,
        project_id=project_id,
        name="k",
        kind=kind,
        secret_hash=secret_hash,
        redacted_value="sk-...",
        created_at=1,
        **kw,
    )


def new_key(store: SQLMetadataStore, *, service_account_id: str | None = None) -> ApiKeyRecord:
    """An organization, an active project and a key of it (of a new service account if one is named)."""
    organization = store.create_organization(name="Acme", slug=new_id("org").lower())
    project = store.create_project(organization_id=organization.id, name="p")
    digest = hashlib.sha256(new_secret_key().encode()).hexdigest()
    record = key_record(organization.id, project.id, digest, service_account_id=service_account_id)
    if service_account_id is None:
        store.create_api_key(record)
    else:
        store.create_service_account(
            ServiceAccountRecord(id=service_account_id, project_id=project.id, name="ci", role="member", created_at=1),
            record,
        )
    return record


def test_this_stores_revocation_reaches_its_cache_at_once(metadata_store: SQLMetadataStore) -> None:
    key = new_key(metadata_store)
    assert metadata_store.find_usable_api_key(key.secret_hash, max_age_s=LONG) is not None
    metadata_store.revoke_api_key(key.id, organization_id=key.organization_id, project_id=key.project_id)
    assert metadata_store.find_usable_api_key(key.secret_hash, max_age_s=LONG) is None


def test_archiving_a_project_reaches_the_cache_at_once(metadata_store: SQLMetadataStore) -> None:
    key = new_key(metadata_store)
    assert key.project_id is not None
    assert metadata_store.find_usable_api_key(key.secret_hash, max_age_s=LONG) is not None
    metadata_store.update_project(key.project_id, organization_id=key.organization_id, status="archived")
    assert metadata_store.find_usable_api_key(key.secret_hash, max_age_s=LONG) is None


def test_deleting_a_service_account_reaches_the_cache_at_once(metadata_store: SQLMetadataStore) -> None:
    key = new_key(metadata_store, service_account_id=new_id("service_account"))
    assert key.project_id is not None and key.service_account_id is not None
    assert metadata_store.find_usable_api_key(key.secret_hash, max_age_s=LONG) is not None
    metadata_store.delete_service_account(key.service_account_id, project_id=key.project_id)
    assert metadata_store.find_usable_api_key(key.secret_hash, max_age_s=LONG) is None


def test_another_stores_revocation_is_seen_once_the_entry_is_max_age_old(database: Database) -> None:
    here, elsewhere = SQLMetadataStore(database), SQLMetadataStore(database)
    key = new_key(here)
    assert here.find_usable_api_key(key.secret_hash, max_age_s=KEY_CACHE_TTL_S) is not None
    elsewhere.revoke_api_key(key.id, organization_id=key.organization_id, project_id=key.project_id)
    assert here.find_usable_api_key(key.secret_hash) is None  # without max_age_s: the database, always
    time.sleep(KEY_CACHE_TTL_S)
    assert here.find_usable_api_key(key.secret_hash, max_age_s=KEY_CACHE_TTL_S) is None


def test_an_unknown_key_is_not_cached_so_a_new_key_works_at_once(database: Database) -> None:
    here, elsewhere = SQLMetadataStore(database), SQLMetadataStore(database)
    organization = elsewhere.create_organization(name="Acme", slug="acme-new")
    project = elsewhere.create_project(organization_id=organization.id, name="p")
    digest = hashlib.sha256(b"sk-new").hexdigest()
    assert here.find_usable_api_key(digest, max_age_s=LONG) is None
    elsewhere.create_api_key(key_record(organization.id, project.id, digest))
    assert here.find_usable_api_key(digest, max_age_s=LONG) is not None

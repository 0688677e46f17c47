"""Organizations, projects, API keys and service accounts of the SQL metadata store."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import msgspec

from tunewright.storage import audit
from tunewright.storage.audit import record_audit
from tunewright.storage.errors import NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.metadata_base import SQLStoreBase, now
from tunewright.storage.records import (
    ApiKeyRecord,
    OrganizationRecord,
    Page,
    ProjectRecord,
    ServiceAccountRecord,
)
from tunewright.storage.rows import from_row, to_params

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tunewright.storage.audit import AuditActor
    from tunewright.storage.db import Connection, Database

_PROJECT_CHANGES = ("name", "external_key_id", "status", "archived_at", "max_running_jobs")

KEY_CACHE_TTL_S = 0.5
"""How long `find_usable_api_key(..., max_age_s=...)` may answer from memory (the API passes this).

A key revoked, or a project archived, by another process (another API worker, a `serve` replica, the CLI) is
refused by this one within this long; a change made through this store object takes effect at once.
"""

_KEY_CACHE_MAX = 10_000


class _KeyCache:
    """Usable keys by secret hash, each with the monotonic time its lookup started.

    Any in-process change that can make a key unusable clears it and bumps `generation`, so that a lookup that
    raced with the change does not store what it read before it.
    """

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, ApiKeyRecord]] = {}
        self.generation = 0
        self.lock = threading.Lock()

    def get(self, secret_hash: str, max_age_s: float) -> ApiKeyRecord | None:
        entry = self.entries.get(secret_hash)
        if entry is None or time.monotonic() - entry[0] >= max_age_s:
            return None
        return entry[1]

    def put(self, secret_hash: str, record: ApiKeyRecord, *, started: float, generation: int) -> None:
        with self.lock:
            if generation != self.generation:
                return
            if len(self.entries) >= _KEY_CACHE_MAX:
                self.entries.clear()  # a crude bound: entries are cheap to refetch
            self.entries[secret_hash] = (started, record)

    def clear(self) -> None:
        with self.lock:
            self.generation += 1
            self.entries.clear()


class TenantsMixin(SQLStoreBase):
    """`MetadataStore` methods for tenants and keys."""

    def __init__(self, database: Database) -> None:
        """Work on `database`, with an empty cache of usable keys."""
        super().__init__(database)
        self._keys = _KeyCache()

    def create_organization(self, *, name: str, slug: str) -> OrganizationRecord:
        """Insert an organization. `Conflict` if the slug exists."""
        record = OrganizationRecord(id=new_id("org"), name=name, slug=slug, created_at=now())
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_organization", to_params(record))
        return record

    def get_organization(self, organization_id: str) -> OrganizationRecord:
        """Return one organization. `NotFound`."""
        with self.database.reading() as conn:
            row = conn.run("get_organization", {"id": organization_id}).fetchone()
        if row is None:
            raise NotFound(organization_id)
        return from_row(OrganizationRecord, row)

    def find_organization(self, *, slug: str) -> OrganizationRecord | None:
        """Return the organization with this slug, if any."""
        with self.database.reading() as conn:
            row = conn.run("find_organization", {"slug": slug}).fetchone()
        return None if row is None else from_row(OrganizationRecord, row)

    def create_project(
        self,
        *,
        organization_id: str,
        name: str,
        external_key_id: str | None = None,
        max_running_jobs: int | None = None,
        actor: AuditActor | None = None,
    ) -> ProjectRecord:
        """Insert an active project."""
        record = ProjectRecord(
            id=new_id("project"),
            organization_id=organization_id,
            name=name,
            created_at=now(),
            external_key_id=external_key_id,
            max_running_jobs=max_running_jobs,
        )
        with self.database.transaction(immediate=True) as conn:
            _insert_project(conn, actor, record)
        return record

    def ensure_project(self, *, organization_id: str, name: str, actor: AuditActor | None = None) -> ProjectRecord:
        """Return the organization's oldest project called `name`, creating it if there is none.

        The look-up and the insert are one transaction under the tenants lock (`lock_tenants`: an advisory lock
        on PostgreSQL, BEGIN IMMEDIATE on SQLite), so processes asking at once for a missing project make one.
        """
        with self.database.transaction(immediate=True) as conn:
            conn.run("lock_tenants")
            found = self.find_project(organization_id=organization_id, name=name)
            if found is not None:
                return found
            return self.create_project(organization_id=organization_id, name=name, actor=actor)

    def create_first_tenant(
        self,
        organization: OrganizationRecord,
        project: ProjectRecord,
        key: ApiKeyRecord,
        *,
        actor: AuditActor | None = None,
    ) -> bool:
        """Insert a deployment's first organization, project and key, unless it has a tenant already.

        A tenant already there is an unrevoked key or an organization with `organization.slug`. The look-up and
        the inserts are one transaction under the tenants lock, so of several processes starting at once on an
        empty database exactly one inserts. Returns whether this call inserted.
        """
        with self.database.transaction(immediate=True) as conn:
            conn.run("lock_tenants")
            if self.list_all_api_keys() or self.find_organization(slug=organization.slug) is not None:
                return False
            conn.run("insert_organization", to_params(organization))
            _insert_project(conn, actor, project)
            _insert_key(conn, actor, key)
        return True

    def get_project(self, project_id: str, *, organization_id: str | None) -> ProjectRecord:
        """Return a project; with `organization_id`, only if it belongs to it. `NotFound`."""
        with self.database.reading() as conn:
            row = conn.run("get_project", {"id": project_id, "organization_id": organization_id}).fetchone()
        if row is None:
            raise NotFound(project_id)
        return from_row(ProjectRecord, row)

    def find_project(self, *, organization_id: str, name: str) -> ProjectRecord | None:
        """Return the oldest project of this organization with this name, if any."""
        with self.database.reading() as conn:
            row = conn.run("find_project", {"organization_id": organization_id, "name": name}).fetchone()
        return None if row is None else from_row(ProjectRecord, row)

    def list_projects(
        self, *, organization_id: str | None, after: str | None, limit: int, include_archived: bool
    ) -> Page[ProjectRecord]:
        """Projects of an organization (`None`: of every organization), oldest first."""
        with self.database.reading() as conn:
            return self._page(
                conn,
                ProjectRecord,
                query="list_projects",
                cursor_query="project_cursor",
                scope={"organization_id": organization_id},
                filters={"include_archived": int(include_archived)},
                after=after,
                limit=limit,
                order="asc",
            )

    def update_project(
        self, project_id: str, *, organization_id: str, actor: AuditActor | None = None, **changes: Any
    ) -> ProjectRecord:
        """Set `name`, `external_key_id`, `status`, `archived_at`, `max_running_jobs`; return the new row.

        Raises `NotFound`. Audited as `project.archived` when the change archives the project, else
        `project.updated`.
        """
        if not changes:
            return self.get_project(project_id, organization_id=organization_id)
        with self.database.transaction(immediate=True) as conn:
            record = self._update(
                conn,
                ProjectRecord,
                sql=self.database.query("update_project"),
                where={"id": project_id, "organization_id": organization_id},
                changes=changes,
                columns=_PROJECT_CHANGES,
            )
            if record is not None:
                _audit_project_change(conn, actor, record, changes)
        self._keys.clear()  # an archived project's keys stop working
        if record is None:
            raise NotFound(project_id)
        return record

    # --- API keys ------------------------------------------------------------------------------------

    def create_api_key(self, record: ApiKeyRecord, *, actor: AuditActor | None = None) -> ApiKeyRecord:
        """Insert a key row (the caller hashed the secret; `api_key.created`). `Conflict` on a duplicate hash."""
        with self.database.transaction(immediate=True) as conn:
            _insert_key(conn, actor, record)
        return record

    def find_api_key(self, secret_hash: str) -> ApiKeyRecord | None:
        """Return the key with this hash (revoked ones too: the caller checks `revoked_at`)."""
        with self.database.reading() as conn:
            row = conn.run("find_api_key", {"secret_hash": secret_hash}).fetchone()
        return None if row is None else from_row(ApiKeyRecord, row)

    def find_usable_api_key(self, secret_hash: str, *, max_age_s: float = 0.0) -> ApiKeyRecord | None:
        """Return the key with this hash if it is unrevoked and its project (if any) is active; one query.

        With `max_age_s > 0`, a usable key looked up less than `max_age_s` ago is answered from memory
        (unknown and unusable keys are always looked up, so a new key works at once).
        """
        keys = self._keys
        if max_age_s > 0:
            cached = keys.get(secret_hash, max_age_s)
            if cached is not None:
                return cached
        started, generation = time.monotonic(), keys.generation
        with self.database.reading() as conn:
            row = conn.run("find_usable_api_key", {"secret_hash": secret_hash, "now": now()}).fetchone()
        if row is None:
            return None
        record = from_row(ApiKeyRecord, row)
        if max_age_s > 0:
            keys.put(secret_hash, record, started=started, generation=generation)
        return record

    def touch_api_key(self, key_id: str, at: int) -> None:
        """Set `last_used_at`."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("touch_api_key", {"id": key_id, "at": at})

    def list_api_keys(
        self, *, organization_id: str, project_id: str | None, after: str | None, limit: int, order: str = "asc"
    ) -> Page[ApiKeyRecord]:
        """Unrevoked keys of a project (or, with `project_id=None`, the organization's admin keys), by creation."""
        with self.database.reading() as conn:
            return self._page(
                conn,
                ApiKeyRecord,
                query="list_api_keys",
                cursor_query="api_key_cursor",
                scope={"organization_id": organization_id, "project_id": project_id},
                after=after,
                limit=limit,
                order=order,
            )

    def get_api_key(self, key_id: str, *, organization_id: str, project_id: str | None) -> ApiKeyRecord:
        """Return one unrevoked key of the project (or admin key of the organization). `NotFound`."""
        params = {"id": key_id, "organization_id": organization_id, "project_id": project_id}
        with self.database.reading() as conn:
            row = conn.run("get_api_key", params).fetchone()
        if row is None:
            raise NotFound(key_id)
        return from_row(ApiKeyRecord, row)

    def revoke_api_key(
        self, key_id: str, *, organization_id: str, project_id: str | None, actor: AuditActor | None = None
    ) -> ApiKeyRecord:
        """Mark a key revoked now (`api_key.deleted`). `NotFound` if absent or already revoked."""
        params = {"id": key_id, "organization_id": organization_id, "project_id": project_id, "now": now()}
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("revoke_api_key", params).fetchone()
            if row is not None:
                _audit_key_revoked(conn, actor, row)
        self._keys.clear()
        if row is None:
            raise NotFound(key_id)
        return from_row(ApiKeyRecord, row)

    def update_api_key_policy(
        self,
        key_id: str,
        *,
        organization_id: str,
        project_id: str | None,
        expires_at: int | None,
        scopes: list[str] | None,
        changes_requested: dict[str, Any],
        actor: AuditActor | None = None,
    ) -> ApiKeyRecord:
        """Set an unrevoked key's expiry and scopes (`api_key.updated` with `changes_requested`). `NotFound`."""
        params = {
            "id": key_id,
            "organization_id": organization_id,
            "project_id": project_id,
            "expires_at": expires_at,
            "scopes": None if scopes is None else msgspec.json.encode(scopes).decode(),
        }
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("update_api_key_policy", params).fetchone()
            if row is not None:
                details = {"id": key_id, "changes_requested": changes_requested}
                record_audit(
                    conn,
                    actor,
                    audit.API_KEY_UPDATED,
                    organization_id=organization_id,
                    project_id=project_id,
                    details=details,
                )
        self._keys.clear()  # new scopes or expiry apply at once in this process
        if row is None:
            raise NotFound(key_id)
        return from_row(ApiKeyRecord, row)

    def list_all_api_keys(self) -> list[ApiKeyRecord]:
        """Every unrevoked key of every organization, oldest first."""
        with self.database.reading() as conn:
            rows = conn.run("list_all_api_keys", {}).fetchall()
        return [from_row(ApiKeyRecord, row) for row in rows]

    # --- service accounts ----------------------------------------------------------------------------

    def create_service_account(
        self, record: ServiceAccountRecord, key: ApiKeyRecord | None, *, actor: AuditActor | None = None
    ) -> None:
        """Insert a service account and its first key (if any) in one transaction.

        Audited as `service_account.created`, then `api_key.created`.
        """
        details = {"id": record.id, "data": {"role": record.role}}
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_service_account", to_params(record))
            record_audit(conn, actor, audit.SERVICE_ACCOUNT_CREATED, project_id=record.project_id, details=details)
            if key is not None:
                _insert_key(conn, actor, key)

    def list_service_accounts(self, *, project_id: str, after: str | None, limit: int) -> Page[ServiceAccountRecord]:
        """Service accounts of a project, oldest first."""
        with self.database.reading() as conn:
            return self._page(
                conn,
                ServiceAccountRecord,
                query="list_service_accounts",
                cursor_query="service_account_cursor",
                scope={"project_id": project_id},
                after=after,
                limit=limit,
                order="asc",
            )

    def update_service_account(
        self, account_id: str, *, project_id: str, name: str, role: str, actor: AuditActor | None = None
    ) -> ServiceAccountRecord:
        """Set a service account's name and role (`service_account.updated` with the role). `NotFound`."""
        params = {"id": account_id, "project_id": project_id, "name": name, "role": role}
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("update_service_account", params).fetchone()
            if row is not None:
                details = {"id": account_id, "changes_requested": {"role": role}}
                record_audit(conn, actor, audit.SERVICE_ACCOUNT_UPDATED, project_id=project_id, details=details)
        self._keys.clear()  # a role of `none` makes the account's keys unusable
        if row is None:
            raise NotFound(account_id)
        return from_row(ServiceAccountRecord, row)

    def add_service_account_key(self, key: ApiKeyRecord, *, actor: AuditActor | None = None) -> ApiKeyRecord:
        """Insert another key of a service account that still exists (`api_key.created`). `NotFound`."""
        account_id = key.service_account_id
        assert account_id is not None and key.project_id is not None
        with self.database.transaction(immediate=True) as conn:
            if conn.run("get_service_account", {"id": account_id, "project_id": key.project_id}).fetchone() is None:
                raise NotFound(account_id)
            _insert_key(conn, actor, key)
        return key

    def get_service_account(self, account_id: str, *, project_id: str) -> ServiceAccountRecord:
        """Return one service account. `NotFound`."""
        with self.database.reading() as conn:
            row = conn.run("get_service_account", {"id": account_id, "project_id": project_id}).fetchone()
        if row is None:
            raise NotFound(account_id)
        return from_row(ServiceAccountRecord, row)

    def delete_service_account(self, account_id: str, *, project_id: str, actor: AuditActor | None = None) -> None:
        """Delete a service account and revoke its keys, in one transaction. `NotFound`.

        Audited as `service_account.deleted` and one `api_key.deleted` per key it revokes.
        """
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("delete_service_account", {"id": account_id, "project_id": project_id}).fetchone()
            if row is None:
                raise NotFound(account_id)
            details = {"id": account_id}
            record_audit(conn, actor, audit.SERVICE_ACCOUNT_DELETED, project_id=project_id, details=details)
            params = {"service_account_id": account_id, "now": now()}
            for key in conn.run("revoke_service_account_keys", params).fetchall():
                _audit_key_revoked(conn, actor, key)
        self._keys.clear()


def _audit_project_change(
    conn: Connection, actor: AuditActor | None, record: ProjectRecord, changes: dict[str, Any]
) -> None:
    """Record `project.archived` for an archive, else `project.updated` with the fields asked for."""
    if changes.get("status") == "archived":
        record_audit(conn, actor, audit.PROJECT_ARCHIVED, project_id=record.id, details={"id": record.id})
        return
    requested: dict[str, Any] = {}
    if "name" in changes:
        requested.update(title=changes["name"], name=changes["name"])
    if "external_key_id" in changes:
        requested["external_key_id"] = changes["external_key_id"]
    details = {"id": record.id, "changes_requested": requested}
    record_audit(conn, actor, audit.PROJECT_UPDATED, project_id=record.id, details=details)


def _insert_project(conn: Connection, actor: AuditActor | None, record: ProjectRecord) -> None:
    """Insert a project row and record `project.created`."""
    conn.run("insert_project", to_params(record))
    details = {"id": record.id, "data": {"name": record.name, "title": record.name}}
    record_audit(conn, actor, audit.PROJECT_CREATED, project_id=record.id, details=details)


def _insert_key(conn: Connection, actor: AuditActor | None, record: ApiKeyRecord) -> None:
    """Insert a key row and record `api_key.created` (an admin key's entry has no project; scopes when set)."""
    conn.run("insert_api_key", to_params(record))
    details: dict[str, Any] = {"id": record.id}
    if record.scopes:
        details["data"] = {"scopes": record.scopes}
    record_audit(
        conn,
        actor,
        audit.API_KEY_CREATED,
        organization_id=record.organization_id,
        project_id=record.project_id,
        details=details,
    )


def _audit_key_revoked(conn: Connection, actor: AuditActor | None, key: Mapping[str, Any]) -> None:
    """Record `api_key.deleted` for a revoked key's row (`id`, `organization_id`, `project_id`)."""
    record_audit(
        conn,
        actor,
        audit.API_KEY_DELETED,
        organization_id=key["organization_id"],
        project_id=key["project_id"],
        details={"id": key["id"]},
    )

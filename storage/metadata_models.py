"""Fine-tuned models and their permissions (`checkpoint.permission`) of the SQL metadata store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunewright.storage import audit
from tunewright.storage.audit import record_audit
from tunewright.storage.errors import NotFound
from tunewright.storage.metadata_base import SQLStoreBase
from tunewright.storage.records import ModelRecord, Page, PermissionRecord
from tunewright.storage.rows import from_row, to_params

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tunewright.storage.audit import AuditActor


class ModelsMixin(SQLStoreBase):
    """`MetadataStore` methods for models and permissions."""

    def insert_model(self, record: ModelRecord) -> None:
        """Insert a fine-tuned model row. `Conflict` if the name exists."""
        with self.database.transaction(immediate=True) as conn:
            conn.run("insert_model", to_params(record))

    def get_model(self, model_id: str, *, project_id: str) -> ModelRecord:
        """Return a model this project owns or was granted. `NotFound`."""
        with self.database.reading() as conn:
            row = conn.run("get_model", {"id": model_id, "project_id": project_id}).fetchone()
        if row is None:
            raise NotFound(model_id)
        return from_row(ModelRecord, row)

    def get_owned_model(self, model_id: str, *, project_id: str) -> ModelRecord:
        """Return a model this project owns. `NotFound`."""
        with self.database.reading() as conn:
            row = conn.run("get_owned_model", {"id": model_id, "project_id": project_id}).fetchone()
        if row is None:
            raise NotFound(model_id)
        return from_row(ModelRecord, row)

    def get_organization_model(self, model_id: str, *, organization_id: str | None) -> ModelRecord:
        """Return a model owned by any project of the organization (`None`: of any). `NotFound`."""
        with self.database.reading() as conn:
            row = conn.run("get_organization_model", {"id": model_id, "organization_id": organization_id}).fetchone()
        if row is None:
            raise NotFound(model_id)
        return from_row(ModelRecord, row)

    def list_models(self, *, project_id: str) -> list[ModelRecord]:
        """Owned final fine-tuned models plus every model granted to the project, oldest first."""
        with self.database.reading() as conn:
            rows = conn.run("list_models", {"project_id": project_id}).fetchall()
        return [from_row(ModelRecord, row) for row in rows]

    def delete_model(self, model_id: str, *, project_id: str, actor: AuditActor | None = None) -> list[ModelRecord]:
        """Delete an owned model and what hangs on it, in one transaction; return the deleted models. `NotFound`.

        A fine-tuned model takes its job's checkpoint models and checkpoint rows along; a checkpoint model takes
        its checkpoint row. The permissions on every deleted model go first, each audited as
        `checkpoint.permission.deleted` as an explicit delete is (the foreign key's cascade would drop them
        unrecorded). The named model comes first in the list.
        """
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("get_owned_model", {"id": model_id, "project_id": project_id}).fetchone()
            if row is None:
                raise NotFound(model_id)
            named = from_row(ModelRecord, row)
            scope = {"job_id": named.job_id, "project_id": project_id}
            tuned_job = named.job_id if named.kind == "fine-tune" else None
            dropped = conn.run(
                "delete_model_permissions", {"model": model_id, "project_id": project_id, "job_id": tuned_job}
            ).fetchall()
            for permission in dropped:
                details = {"id": permission["id"]}
                record_audit(conn, actor, audit.CHECKPOINT_PERMISSION_DELETED, project_id=project_id, details=details)
            row = conn.run("delete_model", {"id": model_id, "project_id": project_id}).fetchone()
            if row is None:
                raise NotFound(model_id)
            deleted = [from_row(ModelRecord, row)]
            if named.kind == "checkpoint":
                conn.run("delete_model_checkpoint", {**scope, "model": model_id})
            else:
                rows = conn.run("delete_job_checkpoint_models", scope).fetchall()
                deleted.extend(from_row(ModelRecord, r) for r in rows)
                conn.run("delete_job_checkpoints", scope)
        return deleted

    def create_permissions(self, records: Sequence[PermissionRecord], *, actor: AuditActor | None = None) -> None:
        """Insert permissions in one transaction, skipping a (model, project) pair that already exists.

        Each new one is audited as `checkpoint.permission.created` in the owning project.
        """
        with self.database.transaction(immediate=True) as conn:
            for record in records:
                if conn.run("insert_permission", to_params(record)).fetchone() is None:
                    continue  # the pair existed: nothing changed
                data = {"project_id": record.project_id, "fine_tuned_model_checkpoint": record.model}
                details = {"id": record.id, "data": data}
                owner = record.owner_project_id
                record_audit(conn, actor, audit.CHECKPOINT_PERMISSION_CREATED, project_id=owner, details=details)

    def list_permissions(
        self,
        model_id: str,
        *,
        owner_project_id: str,
        project_id: str | None,
        after: str | None,
        limit: int,
        order: str,
    ) -> Page[PermissionRecord]:
        """Permissions on an owned model (optionally only those of `project_id`). `NotFound`."""
        with self.database.reading() as conn:
            owned = conn.run("get_owned_model", {"id": model_id, "project_id": owner_project_id}).fetchone()
            if owned is None:
                raise NotFound(model_id)
            return self._page(
                conn,
                PermissionRecord,
                query="list_permissions",
                cursor_query="permission_cursor",
                scope={"model": model_id, "owner_project_id": owner_project_id},
                filters={"project_id": project_id},
                after=after,
                limit=limit,
                order=order,
            )

    def get_permission(self, permission_id: str, *, model_id: str, owner_project_id: str) -> PermissionRecord:
        """Return one permission. `NotFound`."""
        params = {"id": permission_id, "model": model_id, "owner_project_id": owner_project_id}
        with self.database.reading() as conn:
            row = conn.run("get_permission", params).fetchone()
        if row is None:
            raise NotFound(permission_id)
        return from_row(PermissionRecord, row)

    def delete_permission(
        self, permission_id: str, *, model_id: str, owner_project_id: str, actor: AuditActor | None = None
    ) -> PermissionRecord:
        """Delete one permission and return it (`checkpoint.permission.deleted`). `NotFound`."""
        params = {"id": permission_id, "model": model_id, "owner_project_id": owner_project_id}
        with self.database.transaction(immediate=True) as conn:
            row = conn.run("delete_permission", params).fetchone()
            if row is not None:
                details = {"id": permission_id}
                event = audit.CHECKPOINT_PERMISSION_DELETED
                record_audit(conn, actor, event, project_id=owner_project_id, details=details)
        if row is None:
            raise NotFound(permission_id)
        return from_row(PermissionRecord, row)

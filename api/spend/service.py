"""Rules of the spend-limit and spend-alert routes: scoping, replacement, listing.

Scoping is the admin routes' (api/admin/service.py): an organization admin key acts on its own organization, a
project of another organization is 404 `project_not_found`, an alert of another organization or another
project 404 `spend_alert_not_found`; the operator key acts on a project's organization, and needs an
`OpenAI-Organization` header for the organization's own limit and alerts.

Alerts are kept as sent (the notification channel included), listed oldest first (`order=asc`, OpenAI's
default). Tunewright sends no email: a crossed alert sends the `spend_alert.triggered` webhook event
(api/spend/quota.py). Replacing an alert's threshold lets it fire again this month.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from tunewright.api.admin.service import organization_of, scoped_project
from tunewright.api.errors import InvalidRequestError, NotFoundError, echo
from tunewright.api.pagination import check_choice, check_limit, edge_ids
from tunewright.api.spend import quota
from tunewright.api.spend.schemas import (
    SpendAlert,
    SpendAlertDeleted,
    SpendAlertList,
    SpendLimitDeletedResource,
    SpendLimitResource,
)
from tunewright.storage.errors import NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.records import SpendAlertRecord, SpendLimitRecord

if TYPE_CHECKING:
    from tunewright.api.auth import Principal
    from tunewright.api.spend.schemas import CreateSpendAlertBody, UpdateSpendLimitBody
    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

MAX_ALERT_LIMIT = 100


def limit_not_found(project_id: str | None, organization_id: str) -> NotFoundError:
    """404 for a project (or, `project_id` None, the organization) without a spend limit."""
    if project_id is None:
        return NotFoundError(
            f"Organization {organization_id} has no spend limit.", param=None, code="spend_limit_not_found"
        )
    return NotFoundError(
        f"Project {echo(project_id)} has no spend limit.", param="project_id", code="spend_limit_not_found"
    )


def get_spend_limit(
    stores: Stores, settings: Settings, principal: Principal, project_id: str | None
) -> SpendLimitResource:
    """A project's limit (the organization's own when `project_id` is None), `enforcing` while it is reached."""
    organization_id, scoped = _scope(stores, principal, project_id)
    try:
        if scoped is None:
            state = quota.organization_standing(stores, settings, organization_id=organization_id, cached=False)
            record = stores.metadata.get_organization_spend_limit(organization_id)
        else:
            state = quota.standing(stores, settings, organization_id=organization_id, project_id=scoped, cached=False)
            record = stores.metadata.get_spend_limit(scoped)
    except NotFound:
        raise limit_not_found(project_id, organization_id) from None
    return SpendLimitResource.from_record(record, enforcing=state.reached)


def put_spend_limit(
    stores: Stores, settings: Settings, principal: Principal, project_id: str | None, data: UpdateSpendLimitBody
) -> SpendLimitResource:
    """Create or replace a project's limit (the organization's when `project_id` is None), at once in this process."""
    organization_id, scoped = _scope(stores, principal, project_id)
    now = int(time.time())
    stores.metadata.put_spend_limit(
        SpendLimitRecord(
            project_id=scoped,
            organization_id=organization_id,
            created_at=now,
            updated_at=now,
            threshold_amount=data.threshold_amount,
            currency=data.currency,
            period=data.interval,
        ),
        actor=principal.actor,
    )
    quota.CACHE.forget(scoped or organization_id)
    return get_spend_limit(stores, settings, principal, project_id)


def delete_spend_limit(stores: Stores, principal: Principal, project_id: str | None) -> SpendLimitDeletedResource:
    """Remove a project's limit (the organization's when `project_id` is None); 404 when there is none."""
    organization_id, scoped = _scope(stores, principal, project_id)
    if scoped is None:
        gone = stores.metadata.delete_organization_spend_limit(organization_id, actor=principal.actor)
    else:
        gone = stores.metadata.delete_spend_limit(scoped, actor=principal.actor)
    if not gone:
        raise limit_not_found(project_id, organization_id)
    quota.CACHE.forget(scoped or organization_id)
    kind = "project" if scoped is not None else "organization"
    return SpendLimitDeletedResource(object=f"{kind}.spend_limit.deleted")  # type: ignore[arg-type]


def _scope(stores: Stores, principal: Principal, project_id: str | None) -> tuple[str, str | None]:
    """`(organization_id, project_id)` a route acts on (project_id None: the organization's own limit or alerts)."""
    if project_id is None:
        return organization_of(stores, principal).id, None
    organization, project = scoped_project(stores, principal, project_id)
    return organization.id, project.id


# --- alerts ---------------------------------------------------------------------------------------------


def alert_not_found(alert_id: str) -> NotFoundError:
    """404 for an alert id that is not in the caller's scope."""
    return NotFoundError(f"No such spend alert: {echo(alert_id)}", param="alert_id", code="spend_alert_not_found")


def create_alert(
    stores: Stores, principal: Principal, project_id: str | None, data: CreateSpendAlertBody
) -> SpendAlert:
    """Add an alert to a project (or to the organization when `project_id` is None)."""
    organization_id, scoped = _scope(stores, principal, project_id)
    now = int(time.time())
    record = SpendAlertRecord(
        id=new_id("spend_alert"),
        organization_id=organization_id,
        project_id=scoped,
        created_at=now,
        updated_at=now,
        threshold_amount=data.threshold_amount,
        currency=data.currency,
        period=data.interval,
        notification_channel=msgspec.to_builtins(data.notification_channel),
    )
    stores.metadata.insert_spend_alert(record, actor=principal.actor)
    return SpendAlert.from_record(record)


def _alerts(stores: Stores, principal: Principal, project_id: str | None) -> list[SpendAlertRecord]:
    organization_id, scoped = _scope(stores, principal, project_id)
    return stores.metadata.list_spend_alerts(organization_id=organization_id, project_id=scoped)


def _alert(stores: Stores, principal: Principal, project_id: str | None, alert_id: str) -> SpendAlertRecord:
    for record in _alerts(stores, principal, project_id):
        if record.id == alert_id:
            return record
    raise alert_not_found(alert_id)


def get_alert(stores: Stores, principal: Principal, project_id: str | None, alert_id: str) -> SpendAlert:
    """One alert of the scope."""
    return SpendAlert.from_record(_alert(stores, principal, project_id, alert_id))


def update_alert(
    stores: Stores, principal: Principal, project_id: str | None, alert_id: str, data: CreateSpendAlertBody
) -> SpendAlert:
    """Replace an alert's threshold and channel."""
    record = _alert(stores, principal, project_id, alert_id)
    changed = msgspec.structs.replace(
        record,
        threshold_amount=data.threshold_amount,
        currency=data.currency,
        period=data.interval,
        notification_channel=msgspec.to_builtins(data.notification_channel),
        updated_at=int(time.time()),
    )
    try:
        return SpendAlert.from_record(stores.metadata.update_spend_alert(changed, actor=principal.actor))
    except NotFound:
        raise alert_not_found(alert_id) from None


def delete_alert(stores: Stores, principal: Principal, project_id: str | None, alert_id: str) -> SpendAlertDeleted:
    """Delete an alert of the scope."""
    record = _alert(stores, principal, project_id, alert_id)
    try:
        stores.metadata.delete_spend_alert(
            record.id, organization_id=record.organization_id, project_id=record.project_id, actor=principal.actor
        )
    except NotFound:
        raise alert_not_found(alert_id) from None
    kind = "project" if project_id is not None else "organization"
    return SpendAlertDeleted(id=alert_id, object=f"{kind}.spend_alert.deleted")  # type: ignore[arg-type]


def list_alerts(
    stores: Stores,
    principal: Principal,
    project_id: str | None,
    *,
    limit: int,
    order: str,
    after: str | None,
    before: str | None,
) -> SpendAlertList:
    """A page of the scope's alerts: `after`/`before` an alert id of the list, in `order` of creation."""
    check_limit(limit, maximum=MAX_ALERT_LIMIT, minimum=0)
    check_choice(order, ("asc", "desc"), param="order")
    records = _alerts(stores, principal, project_id)
    if order == "desc":
        records.reverse()
    ids = [record.id for record in records]
    for name, cursor in (("after", after), ("before", before)):
        if cursor is not None and cursor not in ids:
            raise InvalidRequestError(
                f"Invalid '{name}': no spend alert {echo(cursor)} in this list.", param=name, code="invalid_value"
            )
    start = ids.index(after) + 1 if after is not None else 0
    stop = ids.index(before) if before is not None else len(ids)
    window = records[start:stop]
    page = window[-limit:] if before is not None and after is None else window[:limit]
    first_id, last_id = edge_ids(page)
    return SpendAlertList(
        data=[SpendAlert.from_record(r) for r in page],
        first_id=first_id,
        last_id=last_id,
        has_more=len(page) < len(window),
    )

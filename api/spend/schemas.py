"""Wire objects of the spend-limit and spend-alert routes, as OpenAI's OpenAPI document and the SDK type them.

Schemas: `UpdateProjectSpendLimitBody` (and `UpdateOrganizationSpendLimitBody`, the same fields),
`ProjectSpendLimitResource`, `OrganizationSpendLimitResource` and their deleted resources,
`CreateSpendAlertBody`, `SpendAlertNotificationChannel`, `ProjectSpendAlert`, `OrganizationSpendAlert` and
their list and deleted resources. Amounts are US cents; the only interval is a calendar month (UTC).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from msgspec import UNSET, Meta, UnsetType

from tunewright.api.schemas import Request, Response

if TYPE_CHECKING:
    from tunewright.storage.records import SpendAlertRecord, SpendLimitRecord

Cents = Annotated[int, Meta(ge=0, le=2**53)]
Recipients = Annotated[list[Annotated[str, Meta(min_length=1, max_length=320)]], Meta(max_length=100)]


class UpdateSpendLimitBody(Request):
    """`UpdateProjectSpendLimitBody` and `UpdateOrganizationSpendLimitBody` (the same fields): set a hard limit."""

    threshold_amount: Annotated[int, Meta(ge=1, le=2**53)]
    currency: Literal["USD"]
    interval: Literal["month"]


class SpendLimitEnforcement(Response):
    """`SpendLimitEnforcement`: `enforcing` while this month's spend has reached the limit, else `inactive`."""

    status: Literal["inactive", "enforcing"]


class SpendLimitResource(Response):
    """`ProjectSpendLimitResource` / `OrganizationSpendLimitResource` (their `object` differs)."""

    threshold_amount: int
    currency: str
    interval: str
    enforcement: SpendLimitEnforcement
    object: Literal["project.spend_limit", "organization.spend_limit"]

    @classmethod
    def from_record(cls, record: SpendLimitRecord, *, enforcing: bool) -> SpendLimitResource:
        """The wire object of a stored limit (a project's, or an organization's when `project_id` is None)."""
        return cls(
            threshold_amount=record.threshold_amount,
            currency=record.currency,
            interval=record.period,
            enforcement=SpendLimitEnforcement(status="enforcing" if enforcing else "inactive"),
            object="project.spend_limit" if record.project_id is not None else "organization.spend_limit",
        )


class SpendLimitDeletedResource(Response):
    """`ProjectSpendLimitDeletedResource` / `OrganizationSpendLimitDeletedResource`."""

    object: Literal["project.spend_limit.deleted", "organization.spend_limit.deleted"]
    deleted: bool = True


class SpendAlertNotificationChannel(Request):
    """`SpendAlertNotificationChannel`: stored and returned; Tunewright announces a crossing by webhook."""

    type: Literal["email"]
    recipients: Recipients
    subject_prefix: Annotated[str, Meta(max_length=256)] | None | UnsetType = UNSET


class CreateSpendAlertBody(Request):
    """`CreateSpendAlertBody`: creates an alert, and replaces one on update."""

    threshold_amount: Cents
    currency: Literal["USD"]
    interval: Literal["month"]
    notification_channel: SpendAlertNotificationChannel


class SpendAlert(Response):
    """`ProjectSpendAlert` / `OrganizationSpendAlert` (their `object` differs)."""

    id: str
    object: Literal["project.spend_alert", "organization.spend_alert"]
    threshold_amount: int
    currency: str
    interval: str
    notification_channel: dict[str, Any]

    @classmethod
    def from_record(cls, record: SpendAlertRecord) -> SpendAlert:
        """The wire object of a stored alert."""
        return cls(
            id=record.id,
            object="organization.spend_alert" if record.project_id is None else "project.spend_alert",
            threshold_amount=record.threshold_amount,
            currency=record.currency,
            interval=record.period,
            notification_channel=record.notification_channel,
        )


class SpendAlertList(Response):
    """`ProjectSpendAlertListResource` / `OrganizationSpendAlertListResource`."""

    data: list[SpendAlert]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class SpendAlertDeleted(Response):
    """`ProjectSpendAlertDeletedResource` / `OrganizationSpendAlertDeletedResource`."""

    id: str
    object: Literal["project.spend_alert.deleted", "organization.spend_alert.deleted"]
    deleted: bool = True

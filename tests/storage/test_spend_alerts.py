"""Spend limits and alerts over every database: a limit replaced in place, an alert fired once a month."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import msgspec
import pytest
from fixtures.webhooks import make_endpoint

from tunewright.storage.errors import NotFound
from tunewright.storage.ids import new_id
from tunewright.storage.outbox import SPEND_ALERT_EVENT
from tunewright.storage.records import SpendAlertRecord, SpendLimitRecord

if TYPE_CHECKING:
    from tunewright.storage.metadata import SQLMetadataStore

MONTH = 1_700_000_000


def make_alert(store: SQLMetadataStore, project_id: str | None, organization_id: str = "org_a") -> SpendAlertRecord:
    record = SpendAlertRecord(
        id=new_id("spend_alert"),
        organization_id=organization_id,
        project_id=project_id,
        created_at=1,
        updated_at=1,
        threshold_amount=100,
        notification_channel={"type": "email", "recipients": []},
    )
    store.insert_spend_alert(record)
    return record


def subscribe(store: SQLMetadataStore, project_id: str) -> str:
    return make_endpoint(store, project_id, [SPEND_ALERT_EVENT])


def fire(store: SQLMetadataStore, alert: SpendAlertRecord, month: int = MONTH) -> int | None:
    return store.fire_spend_alert(
        alert,
        month=month,
        event_type=SPEND_ALERT_EVENT,
        event_id=new_id("webhook_event"),
        payload="{}",
        now=time.time(),
    )


def test_a_limit_is_replaced_in_place_and_deleted_once(metadata_store: SQLMetadataStore) -> None:
    limit = SpendLimitRecord(
        project_id="proj_a", organization_id="org_a", created_at=1, updated_at=1, threshold_amount=5
    )
    metadata_store.put_spend_limit(limit)
    replaced = metadata_store.put_spend_limit(msgspec.structs.replace(limit, updated_at=2, threshold_amount=9))
    assert (replaced.created_at, replaced.updated_at, replaced.threshold_amount) == (1, 2, 9)
    assert metadata_store.get_spend_limit("proj_a").threshold_amount == 9
    assert metadata_store.delete_spend_limit("proj_a")
    assert not metadata_store.delete_spend_limit("proj_a")


def test_an_alert_fires_once_a_month_however_many_callers_race(metadata_store: SQLMetadataStore) -> None:
    endpoint = subscribe(metadata_store, "proj_a")
    alert = make_alert(metadata_store, "proj_a")
    results: list[int | None] = []
    threads = [threading.Thread(target=lambda: results.append(fire(metadata_store, alert))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results, key=str) == [1, None, None, None]
    assert metadata_store.list_due_spend_alerts(month=MONTH) == []
    assert [a.id for a in metadata_store.list_due_spend_alerts(month=MONTH + 31 * 86_400)] == [alert.id]
    assert fire(metadata_store, alert, MONTH + 31 * 86_400) == 1  # the next month
    listed = metadata_store.list_webhook_deliveries(endpoint, project_id="proj_a", status=None, after=None, limit=9)
    assert len(listed.items) == 2


def test_an_organization_alert_goes_to_every_project_of_the_organization(metadata_store: SQLMetadataStore) -> None:
    org = metadata_store.create_organization(name="Acme", slug="acme")
    projects = [metadata_store.create_project(organization_id=org.id, name=n).id for n in ("one", "two")]
    other = metadata_store.create_organization(name="Globex", slug="globex")
    outsider = metadata_store.create_project(organization_id=other.id, name="three").id
    for project_id in (*projects, outsider):
        subscribe(metadata_store, project_id)
    alert = make_alert(metadata_store, None, org.id)
    assert fire(metadata_store, alert) == 2


def test_a_replaced_threshold_may_fire_again_and_an_unchanged_one_not(metadata_store: SQLMetadataStore) -> None:
    alert = make_alert(metadata_store, "proj_a")
    assert fire(metadata_store, alert) == 0  # no endpoint subscribed: marked all the same
    same = metadata_store.update_spend_alert(msgspec.structs.replace(alert, notification_channel={"type": "email"}))
    assert same.fired_month == MONTH
    raised = metadata_store.update_spend_alert(msgspec.structs.replace(alert, threshold_amount=200))
    assert raised.fired_month is None
    assert fire(metadata_store, raised) == 0
    with pytest.raises(NotFound):
        metadata_store.update_spend_alert(msgspec.structs.replace(alert, organization_id="org_b"))

"""Records ⇄ rows: the one place that knows which columns hold JSON.

Both dialects hand JSON columns over as text (see `storage/db.py`); records hold plain Python values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from tunewright.storage.records import (
    ApiKeyRecord,
    AuditLogRecord,
    CheckpointRecord,
    ExportRecord,
    IdempotencyRecord,
    JobEventRecord,
    JobListingRecord,
    JobRecord,
    JobStatus,
    SpendAlertRecord,
    WebhookDeliveryRecord,
    WebhookEndpointRecord,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

R = TypeVar("R", bound=msgspec.Struct)

JSON_COLUMNS: dict[type[msgspec.Struct], frozenset[str]] = {
    ApiKeyRecord: frozenset({"scopes"}),
    JobRecord: frozenset({"hyperparameters", "method", "result_files", "error", "metadata", "integrations"}),
    JobEventRecord: frozenset({"data"}),
    CheckpointRecord: frozenset({"metrics"}),
    ExportRecord: frozenset({"error"}),
    WebhookEndpointRecord: frozenset({"event_types"}),
    WebhookDeliveryRecord: frozenset({"attempt_log"}),
    AuditLogRecord: frozenset({"details"}),
    SpendAlertRecord: frozenset({"notification_channel"}),
    IdempotencyRecord: frozenset({"headers"}),
}
POSITIONAL_RECORDS: frozenset[type[msgspec.Struct]] = frozenset({JobListingRecord})
"""Records built from a tuple row as it is (their JSON columns stay JSON text)."""


def from_row(cls: type[R], row: Mapping[str, Any]) -> R:
    """Build a record from a row dict, decoding its JSON columns.

    Raises:
        TypeError: the row's columns do not match the record's fields (a schema bug).
    """
    json_columns = JSON_COLUMNS.get(cls)
    if not json_columns:
        return cls(**row)
    data = dict(row)  # one C-level copy, then only the JSON columns are touched
    for key in json_columns:
        value = data.get(key)
        if isinstance(value, str | bytes):
            data[key] = msgspec.json.decode(value)
    if cls is JobRecord:
        data["status"] = JobStatus(data["status"])
    # The schema is ours and the connectors hand back Python types, so the Struct is built without a
    # validation pass (msgspec.convert cost more than the query on list pages).
    return cls(**data)


def from_tuples(cls: type[R], names: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[R]:
    """Build records from rows given as tuples in the order of `names`, decoding the JSON columns.

    The list pages' path: it skips the dict per row that `from_row` starts from (building those dicts and
    copying them cost more than the query). A positional record (`JobListingRecord`) whose fields the query
    selected in order is built straight from each tuple.
    """
    json_columns = JSON_COLUMNS.get(cls, frozenset())
    if cls in POSITIONAL_RECORDS and tuple(names) == cls.__struct_fields__:
        return [cls(*row) for row in rows]  # the query selected the fields in order: no dict, no names
    json_at = [(index, name) for index, name in enumerate(names) if name in json_columns]
    decode = msgspec.json.decode
    records = []
    for row in rows:
        data = dict(zip(names, row, strict=True))
        for index, name in json_at:
            value = row[index]
            if value is not None:
                data[name] = decode(value)
        records.append(cls(**data))
    return records


def encode_columns(cls: type[msgspec.Struct], values: Mapping[str, Any]) -> dict[str, Any]:
    """Return `values` with the JSON columns of `cls` encoded as text (None stays NULL)."""
    json_columns = JSON_COLUMNS.get(cls, frozenset())
    return {
        key: msgspec.json.encode(value).decode() if key in json_columns and value is not None else value
        for key, value in values.items()
    }


def to_params(record: msgspec.Struct) -> dict[str, Any]:
    """Return a record's fields as query parameters, JSON columns encoded."""
    return encode_columns(type(record), msgspec.structs.asdict(record))

"""Records ⇄ rows: the one place that knows which columns hold JSON.

Both dialects hand JSON columns over as text (see `storage/db.py`); records hold plain Python values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from tunewright.storage.records import CheckpointRecord, JobEventRecord, JobRecord, JobStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

R = TypeVar("R", bound=msgspec.Struct)

JSON_COLUMNS: dict[type[msgspec.Struct], frozenset[str]] = {
    JobRecord: frozenset({"hyperparameters", "method", "result_files", "error", "metadata", "integrations"}),
    JobEventRecord: frozenset({"data"}),
    CheckpointRecord: frozenset({"metrics"}),
}


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

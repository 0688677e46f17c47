"""`tunewright usage [--start WHEN] [--end WHEN] [--org ORG]`: usage and cost per project for a period.

It reads the metered usage straight from the metadata store, as the operator would through
`/v1/organization/usage/…` and `/v1/organization/costs`, and prices it with the same code and the prices of the
TOML config (`--config`), so its costs are those the API reports under the same config. The period runs from
`--start` (default: the first day of this month, UTC) to `--end` (exclusive; default: now); a day's stored bytes
count when that day's 00:00 UTC is in it.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from tunewright.api.usage.service import cost_lines
from tunewright.clients.cli.datadir import open_data
from tunewright.clients.cli.remote import format_table
from tunewright.storage.records import UsageWindow

if TYPE_CHECKING:
    import argparse

    from tunewright.storage.base import MetadataStore, Stores
    from tunewright.storage.settings import Settings

USAGE_ERROR = 2
HEADERS = [
    "ORG",
    "PROJECT",
    "PROJECT ID",
    "REQUESTS",
    "INPUT TOKENS",
    "OUTPUT TOKENS",
    "TRAINED TOKENS",
    "GiB-HOURS",
    "COST (USD)",
]
COLUMNS = ("requests", "input", "output", "trained", "gib_hours", "cost")


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `usage` command."""
    parser = subcommands.add_parser(
        "usage",
        help="print usage and cost per project for a period",
        description="Print each project's metered usage (completion requests, input and output tokens, trained "
        "tokens, stored GiB-hours) and its cost in USD from the TOML config's prices, for a period. WHEN is a date "
        "(2025-01-31, UTC midnight), a time (2025-01-31T12:00:00Z) or unix seconds.",
    )
    parser.add_argument("--start", metavar="WHEN", help="start of the period (default: the first day of this month)")
    parser.add_argument("--end", metavar="WHEN", help="end of the period, exclusive (default: now)")
    parser.add_argument("--org", metavar="ORG", help="only this organization (its slug, as `keys list` shows it)")
    parser.set_defaults(handler=run_usage)


def parse_when(value: str) -> int:
    """Unix seconds of `value`: unix seconds, a date (UTC midnight) or an ISO time (UTC unless it says otherwise).

    Raises:
        ValueError: none of those.
    """
    if value.isdigit():
        return int(value)
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def month_start(now: float) -> int:
    """The first day of `now`'s month, 00:00 UTC."""
    today = datetime.fromtimestamp(now, tz=UTC)
    return int(today.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp())


def run_usage(args: argparse.Namespace, settings: Settings) -> int:
    """`usage`: one row per project with usage in the period, then the total."""
    now = time.time()
    try:
        start = month_start(now) if args.start is None else parse_when(args.start)
        end = int(now) + 1 if args.end is None else parse_when(args.end)
    except ValueError as exc:
        print(f"tunewright: usage: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if end <= start:
        print("tunewright: usage: --end must be after --start", file=sys.stderr)
        return USAGE_ERROR
    with open_data(settings) as data:
        metadata = data.stores.metadata
        organization_id = None
        if args.org is not None:
            found = metadata.find_organization(slug=args.org)
            if found is None:
                print(f"tunewright: usage: no organization {args.org!r}", file=sys.stderr)
                return 1
            organization_id = found.id
        window = UsageWindow(organization_id=organization_id, origin=start, width=end - start, start=start, end=end)
        rows = project_rows(data.stores, settings, window)
        names = {project_id: _names(metadata, project_id) for project_id in rows}
    print(f"Usage from {_when(start)} to {_when(end)} (UTC), costs in USD from the configured prices")
    if not rows:
        print("no usage in this period")
        return 0
    table = [
        [*names[project_id], project_id, *_cells(rows[project_id])]
        for project_id in sorted(rows, key=names.__getitem__)
    ]
    total: dict[str, Decimal] = defaultdict(Decimal)
    for values in rows.values():
        for column in COLUMNS:
            total[column] += values[column]
    table.append(["TOTAL", "", "", *_cells(total)])
    print(format_table(HEADERS, table))
    return 0


def project_rows(stores: Stores, settings: Settings, window: UsageWindow) -> dict[str, dict[str, Decimal]]:
    """Each project's totals over the window (one bucket): requests, tokens, GiB-hours and dollars."""
    rows: dict[str, dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(COLUMNS, Decimal(0)))
    metadata = stores.metadata
    for total in metadata.usage_totals(window, group_by=("project_id",)):
        row = rows[total.project_id or ""]
        row["requests"] += total.requests
        row["input"] += total.input_tokens
        row["output"] += total.output_tokens
    for training in metadata.training_totals(window, group_by=("project_id",)):
        rows[training.project_id or ""]["trained"] += training.trained_tokens
    for line in cost_lines(stores, settings, window):
        row = rows[line.project_id or ""]
        row["cost"] += line.amount
        if line.unit == "gibibyte_hours":
            row["gib_hours"] += line.quantity
    return dict(rows)


def _cells(values: dict[str, Decimal]) -> list[str]:
    counts = [str(int(values[column])) for column in ("requests", "input", "output", "trained")]
    return [*counts, f"{values['gib_hours']:.3f}", f"{values['cost']:.6f}"]


def _names(metadata: MetadataStore, project_id: str) -> tuple[str, str]:
    project = metadata.get_project(project_id, organization_id=None)
    return metadata.get_organization(project.organization_id).slug, project.name


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")

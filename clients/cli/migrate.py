"""`tunewright migrate`: bring the database schema up to date."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunewright.clients.cli.datadir import open_data

if TYPE_CHECKING:
    import argparse

    from tunewright.storage.settings import Settings


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `migrate` command."""
    parser = subcommands.add_parser(
        "migrate",
        help="apply pending database migrations",
        description="Create the data directory if needed and apply pending database migrations.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Apply pending migrations and print their names."""
    with open_data(settings) as data:
        if not data.applied:
            print("database is up to date")
        for name in data.applied:
            print(f"applied {name}")
    return 0

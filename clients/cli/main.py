"""The `tunewright` command: parse arguments, load settings once, hand them to one command group.

Every command group lives in its own module (`serve`, `migrate`, `keys`, `models`, `usage`, …) and exposes
`register(subcommands)`, which adds its parser and sets `handler(args, settings) -> int`. The groups that are
clients of a running server (`files`, `jobs`, `models list|delete`, `chat`, `projects`, `keys … --project-id`,
`import`) share their flags, client and errors through `remote.py`; the others work on the data dir with no
server.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from tunewright.clients.cli import (
    chat,
    files,
    importer,
    inference,
    jobs,
    keys,
    migrate,
    models,
    projects,
    serve,
    usage,
    worker,
)
from tunewright.storage.errors import StorageError
from tunewright.storage.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from collections.abc import Sequence

PROG = "tunewright"
USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for every command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tunewright: a self-hosted, OpenAI-compatible fine-tuning service. serve, worker, inference, "
        "migrate, keys create|list|revoke, usage and models make-tiny work on the data dir with no server; the "
        "other commands are clients of a server (--base-url or OPENAI_BASE_URL; a project key from --api-key, "
        "TUNEWRIGHT_API_KEY or OPENAI_API_KEY; an admin key from --admin-key or OPENAI_ADMIN_KEY).",
        epilog="Exit status: 0 success; 1 the command failed (the server refused the request or could not be "
        "reached, or the job followed did not succeed); 2 a usage error, a missing key or a bad setting; 130 "
        "interrupted.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="TOML settings file (default: $TUNEWRIGHT_CONFIG); environment variables win over it",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (serve, worker, inference, migrate, keys, usage, files, jobs, models, chat, projects, importer):
        group.register(subcommands)
    return parser


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the command-line flags that name a setting (`--host`, `--port`, …) and were given."""
    return {
        name: value for name, value in vars(args).items() if name in Settings.__struct_fields__ and value is not None
    }


def error(message: str) -> None:
    """Print one `tunewright: <message>` line to stderr."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `tunewright` command line; return the exit status.

    Args:
        argv: the arguments after the program name (default: `sys.argv[1:]`).

    Returns:
        0 on success, 1 when the command failed, 2 for a usage or settings error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = settings_overrides(args)
    try:
        settings = load_settings(os.environ, args.config, **overrides)
    except SettingsError as exc:
        error(str(exc))
        return USAGE_ERROR
    args.settings_overrides = overrides
    try:
        return int(args.handler(args, settings))
    except SettingsError as exc:
        error(str(exc))
        return USAGE_ERROR
    except StorageError as exc:
        error(f"storage: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

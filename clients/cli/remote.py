"""What the commands that are clients of a running server share: flags, the `openai` client, errors, output.

A client command is added with `add_command`, which gives it `--base-url` (else `$OPENAI_BASE_URL`, else the
local default), the key flag (`--api-key`, else `$TUNEWRIGHT_API_KEY`, else `$OPENAI_API_KEY`; for the admin
groups `--admin-key`, else `$OPENAI_ADMIN_KEY`) and, for commands that print an object, `--json`. Its function
gets an `openai.OpenAI` client and the parsed arguments; what the SDK raises becomes one line on stderr and an
exit status (`EXIT_*` below, documented in the README's "Command line").
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator, Mapping, Sequence

    import openai

    from tunewright.storage.settings import Settings

    ClientFunction = Callable[[openai.OpenAI, argparse.Namespace], int | None]

EXIT_OK = 0
EXIT_FAILED = 1
"""The server refused the request or could not be reached, or the job followed did not succeed."""
EXIT_USAGE = 2
"""Bad arguments, no key, or a bad setting."""
EXIT_INTERRUPTED = 130

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
BASE_URL_VARIABLE = "OPENAI_BASE_URL"  # the openai SDK's own variable, so one shell set-up serves both
KEY_VARIABLES = ("TUNEWRIGHT_API_KEY", "OPENAI_API_KEY")
ADMIN_KEY_VARIABLES = ("OPENAI_ADMIN_KEY",)


class CommandError(Exception):
    """A failure that ends a client command with exit status 1; its message is the one line printed."""


class UsageError(Exception):
    """A wrong use of a client command (exit status 2); its message is the one line printed."""


def add_base_url_argument(parser: argparse.ArgumentParser) -> None:
    """`--base-url`, for the commands that are clients of a server."""
    parser.add_argument(
        "--base-url",
        dest="api_base_url",
        metavar="URL",
        default=None,
        help=f"the API's base URL (default: ${BASE_URL_VARIABLE}, else {DEFAULT_BASE_URL})",
    )


def add_key_argument(parser: argparse.ArgumentParser, *, admin: bool = False) -> None:
    """`--api-key` (a project key) or, for the admin groups, `--admin-key`."""
    if admin:
        parser.add_argument(
            "--admin-key", dest="api_key", metavar="KEY", help="an admin key (default: $OPENAI_ADMIN_KEY)"
        )
        parser.add_argument(
            "--organization",
            metavar="ORG_ID",
            help="with the operator key: the organization to act on (default: $OPENAI_ORG_ID, read by the SDK)",
        )
    else:
        parser.add_argument(
            "--api-key",
            dest="api_key",
            metavar="KEY",
            help="a project key (default: $TUNEWRIGHT_API_KEY, else $OPENAI_API_KEY)",
        )
    parser.set_defaults(admin_client=admin)


def add_command(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    function: ClientFunction,
    *,
    help: str,
    description: str | None = None,
    admin: bool = False,
    json_output: bool = True,
) -> argparse.ArgumentParser:
    """Add the client command `name` (`GROUP ACTION`) to `actions`; `function` runs with a ready client."""
    parser = actions.add_parser(name.split()[-1], help=help, description=description or help[:1].upper() + help[1:])
    add_base_url_argument(parser)
    add_key_argument(parser, admin=admin)
    if json_output:
        parser.add_argument("--json", action="store_true", help="print the server's JSON instead of a table")
    parser.set_defaults(handler=ClientCommand(name, function), json=False)
    return parser


def resolve_base_url(flag: str | None, environ: Mapping[str, str]) -> str:
    """The API's base URL: `--base-url`, else `$OPENAI_BASE_URL`, else the local default (no trailing slash)."""
    return (flag or environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL).rstrip("/")


def resolve_key(flag: str | None, *, admin: bool) -> str | None:
    """The key from the flag, else the first of its environment variables that is set."""
    variables = ADMIN_KEY_VARIABLES if admin else KEY_VARIABLES
    return flag or next((os.environ[name] for name in variables if os.environ.get(name)), None)


def missing_key_message(*, admin: bool) -> str:
    """What to say when no key was given."""
    if admin:
        return "set OPENAI_ADMIN_KEY (or pass --admin-key) to an admin key"
    return f"set {' or '.join(KEY_VARIABLES)} (or pass --api-key) to a project API key"


def make_client(base_url: str, key: str, *, admin: bool, organization: str | None = None) -> openai.OpenAI:
    """An `openai.OpenAI` client of the server at `base_url`, authenticated with `key` (an admin key if `admin`)."""
    import openai  # lazy: the offline commands never pay for importing it

    if admin:
        return openai.OpenAI(base_url=base_url, admin_api_key=key, organization=organization)
    return openai.OpenAI(base_url=base_url, api_key=key)


def error(command: str, message: str) -> None:
    """Print `tunewright: <command>: <message>` to stderr."""
    print(f"tunewright: {command}: {message}", file=sys.stderr, flush=True)


def describe(exc: Exception, base_url: str) -> str:
    """One line for what the SDK raised: `HTTP <status>: <the server's message>`, or why it could not connect."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else None
        return f"HTTP {exc.status_code}: {message or exc.message}"
    if isinstance(exc, openai.APITimeoutError):
        return f"{base_url} did not answer in time"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot connect to {base_url}: {exc.__cause__ or exc}"
    return str(exc)


class ClientCommand:
    """The handler of a client command: resolve the base URL and key, run the function, map failures to exits."""

    def __init__(self, name: str, function: ClientFunction) -> None:
        """`name` is how messages name the command (`files upload`)."""
        self.name = name
        self.function = function

    def __call__(self, args: argparse.Namespace, settings: Settings) -> int:
        """Run the command; return its exit status."""
        import openai

        del settings  # a client of a server: the local settings play no part
        key = resolve_key(args.api_key, admin=args.admin_client)
        if key is None:
            error(self.name, missing_key_message(admin=args.admin_client))
            return EXIT_USAGE
        base_url = resolve_base_url(args.api_base_url, os.environ)
        try:
            organization = getattr(args, "organization", None)
            with make_client(base_url, key, admin=args.admin_client, organization=organization) as client:
                return self.function(client, args) or EXIT_OK
        except UsageError as exc:
            error(self.name, str(exc))
            return EXIT_USAGE
        except CommandError as exc:
            error(self.name, str(exc))
            return EXIT_FAILED
        except openai.OpenAIError as exc:
            error(self.name, describe(exc, base_url))
            return EXIT_FAILED


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return rows as left-aligned columns under their headers."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]
    return "\n".join(lines)


def to_json(value: Any) -> Any:
    """A JSON-ready value of an SDK object (the fields the server sent), a list of them, or plain data."""
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    to_dict = getattr(value, "to_dict", None)
    return to_dict(mode="json") if to_dict is not None else value


def print_json(value: Any) -> None:
    """Print `value` as indented JSON."""
    print(json.dumps(to_json(value), indent=2, ensure_ascii=False))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str) -> None:
    """Print rows under their headers (None as `-`), or `empty` when there are none."""
    if not rows:
        print(empty)
        return
    print(format_table(headers, [["-" if cell is None else str(cell) for cell in row] for row in rows]))


def print_fields(value: Any, names: Sequence[str]) -> None:
    """Print an object's fields as `name  value` lines (times as UTC dates)."""
    rows = []
    for name in names:
        cell = getattr(value, name, None)
        if name.endswith(("_at", "created")) and isinstance(cell, int):
            cell = when(cell)
        elif isinstance(cell, list | dict):
            cell = json.dumps(to_json(cell)) if cell else None
        elif hasattr(cell, "to_dict"):
            cell = json.dumps(to_json(cell))
        rows.append([name, "-" if cell is None else str(cell)])
    print(format_table(["FIELD", "VALUE"], rows))


def show(value: Any, args: argparse.Namespace, fields: Sequence[str]) -> None:
    """Print an object as its `fields`, or as JSON with `--json`."""
    if args.json:
        print_json(value)
    else:
        print_fields(value, fields)


def show_deleted(deleted: Any, args: argparse.Namespace) -> None:
    """Print `deleted <id>`, or the deletion's JSON with `--json`."""
    if args.json:
        print_json(deleted)
    else:
        print(f"deleted {deleted.id}")


def show_page(
    page: Any,
    args: argparse.Namespace,
    headers: Sequence[str],
    row: Callable[[Any], Sequence[Any]],
    *,
    empty: str,
    command: str,
) -> None:
    """Print a page as a table of `row(item)` (then how to get the next page), or as JSON with `--json`."""
    if args.json:
        print_json(page)
        return
    print_table(headers, [row(item) for item in page.data], empty=empty)
    print_more(page, command)


def print_more(page: Any, command: str) -> None:
    """On a page with more after it, say on stderr how to get the next one."""
    if getattr(page, "has_more", False) and page.data:
        print(f"(more: tunewright {command} --after {page.data[-1].id})", file=sys.stderr)


def when(timestamp: int | None) -> str | None:
    """`2025-01-31 12:00:00Z` for unix seconds; None stays None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def page_options(parser: argparse.ArgumentParser, *, limit_help: str) -> None:
    """`--limit` and `--after`, for list commands over a cursor page."""
    parser.add_argument("--limit", metavar="N", type=int, default=None, help=limit_help)
    parser.add_argument("--after", metavar="ID", default=None, help="list from after this id (the next page)")


def given(**params: Any) -> dict[str, Any]:
    """The keyword arguments that were given (not None), to pass on to an SDK method."""
    return {name: value for name, value in params.items() if value is not None}


@contextmanager
def progress(total: int, description: str, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar of `total` bytes on stderr while the block runs; yields `update(bytes done)`.

    Without `enabled` (stderr is not a terminal) nothing is drawn and the update does nothing.
    """
    if not enabled:
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)

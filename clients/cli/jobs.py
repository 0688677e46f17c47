"""`tunewright jobs follow JOB_ID`: print a job's events as they happen, then its outcome.

(The group's other actions are in `job_actions.py`, `estimate.py` and `export.py`.)

It reads `GET /v1/fine_tuning/jobs/{id}/events?stream=true` (server-sent events, oldest first), prints each
event as `[time] level message` and `metrics` events as a progress bar on a terminal, reconnects with
`after=<last event id>` if the stream drops before `[DONE]`, and at `[DONE]` prints the job's final status.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from tunewright.clients.cli.remote import EXIT_USAGE as USAGE_ERROR
from tunewright.clients.cli.remote import (
    add_base_url_argument,
    add_key_argument,
    missing_key_message,
    resolve_base_url,
    resolve_key,
)
from tunewright.storage.records import JobStatus

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator
    from typing import TextIO

    from tunewright.storage.settings import Settings

RETRIES = 3
BACKOFF_S = 0.5
# The server sends a keep-alive comment every 15 s of silence: a read this long means the connection is dead.
TIMEOUT = httpx.Timeout(10.0, read=60.0)
BAR_WIDTH = 24


class FollowError(Exception):
    """A failure that ends `jobs follow` with exit status 1; its message is the one line printed."""


class StreamDropped(Exception):  # noqa: N818 - reads as the event
    """The stream ended before `[DONE]`: worth a reconnect."""


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `jobs` command group."""
    # Both import this module.
    from tunewright.clients.cli.estimate import add_parser as add_estimate_parser
    from tunewright.clients.cli.export import add_parser as add_export_parser
    from tunewright.clients.cli.job_actions import add_parsers as add_job_parsers

    parser = subcommands.add_parser(
        "jobs",
        help="create, list, follow, pause, resume and cancel fine-tuning jobs on a server; estimate or export one",
        description="Create, list, follow, pause, resume and cancel fine-tuning jobs on a server, estimate one, or "
        "export a job's model.",
    )
    actions = parser.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    add_job_parsers(actions)
    follow = actions.add_parser(
        "follow",
        help="print a job's events until it ends; exit 0 if it succeeded, 1 otherwise",
        description="Print a job's events as they happen until it ends, then its outcome. The API key is read "
        "from --api-key, TUNEWRIGHT_API_KEY or OPENAI_API_KEY, the base URL from --base-url or OPENAI_BASE_URL. "
        "Exit 0 if the job succeeded, 1 if it failed or was cancelled (or the server could not be used), 2 without "
        "a key.",
    )
    follow.add_argument("job_id", metavar="JOB_ID", help="the job's id (ftjob-…)")
    add_base_url_argument(follow)
    add_key_argument(follow)
    follow.set_defaults(handler=run_follow)
    add_estimate_parser(actions)
    add_export_parser(actions)


def api_key(command: str, flag: str | None = None) -> str | None:
    """The project key from `--api-key`, TUNEWRIGHT_API_KEY or OPENAI_API_KEY; None (said on stderr) without one."""
    key = resolve_key(flag, admin=False)
    if key is None:
        print(f"tunewright: {command}: {missing_key_message(admin=False)}", file=sys.stderr)
    return key


def run_follow(args: argparse.Namespace, settings: Settings) -> int:
    """`jobs follow JOB_ID`: stream the events, then report the job; the exit status says how it ended."""
    del settings  # a client of a server: the local settings play no part
    key = api_key("jobs follow", args.api_key)
    if key is None:
        return USAGE_ERROR
    return follow_job(resolve_base_url(args.api_base_url, os.environ), key, args.job_id)


def follow_job(base_url: str, key: str, job_id: str) -> int:
    """Print the job's events until it ends, then its outcome; return 0 if it succeeded, else 1."""
    printer = EventPrinter(sys.stdout, tty=sys.stdout.isatty())
    try:
        with open_client(base_url, key) as client:
            follow_events(client, job_id, printer)
            job = fetch_job(client, job_id)
    except FollowError as exc:
        printer.close()
        print(f"tunewright: jobs follow: {exc}", file=sys.stderr)
        return 1
    return report(job, sys.stdout)


def open_client(base_url: str, key: str) -> httpx.Client:
    """An HTTP client of the API at `base_url`, authenticated with `key`."""
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT)


def follow_events(client: httpx.Client, job_id: str, printer: EventPrinter) -> None:
    """Print every event until `[DONE]`, reconnecting after the last event seen when the stream drops.

    Raises:
        FollowError: the server answered an error, could not be reached at first, or kept dropping the stream.
    """
    after: str | None = None
    failures = 0
    while True:
        try:
            with contextlib.closing(read_stream(client, job_id, after)) as events:
                for event in events:
                    if event is None:
                        printer.close()
                        return
                    printer.show(event)
                    after, failures = event["id"], 0
            raise StreamDropped("the server closed the stream before [DONE]")
        except httpx.ConnectError as exc:
            if after is None and failures == 0:
                raise FollowError(f"cannot connect to {client.base_url}: {exc}") from None
            reason = f"cannot reconnect: {exc}"
        except (httpx.TransportError, StreamDropped) as exc:
            reason = str(exc) or type(exc).__name__
        failures += 1
        if failures > RETRIES:
            raise FollowError(f"the event stream dropped {failures} times in a row ({reason})")
        time.sleep(BACKOFF_S * 2 ** (failures - 1))


def read_stream(client: httpx.Client, job_id: str, after: str | None) -> Iterator[dict[str, Any] | None]:
    """Yield the events of one connection to the stream, oldest first, then None at `[DONE]`.

    Raises:
        FollowError: the server answered an HTTP error (its message is kept).
        StreamDropped: the server sent an error frame after the stream started.
    """
    params = {"stream": "true"} if after is None else {"stream": "true", "after": after}
    with client.stream("GET", f"/fine_tuning/jobs/{job_id}/events", params=params) as response:
        if response.is_error:
            response.read()
            raise FollowError(server_message(response))
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue  # blank separators and `: keep-alive` comments
            payload = line.removeprefix("data:").strip()
            if payload == "[DONE]":
                yield None
                return
            body = json.loads(payload)
            if "error" in body:
                raise StreamDropped(f"server error: {body['error'].get('message')}")
            yield body


def fetch_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Return the job's JSON. Raises FollowError with the server's message on an HTTP error."""
    try:
        response = client.get(f"/fine_tuning/jobs/{job_id}")
    except httpx.TransportError as exc:
        raise FollowError(f"cannot read the job from {client.base_url}: {exc}") from None
    if response.is_error:
        raise FollowError(server_message(response))
    return response.json()


def server_message(response: httpx.Response) -> str:
    """`HTTP <status>: <the error envelope's message>` (or the start of a body that is not one)."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200] or response.reason_phrase
    return f"HTTP {response.status_code}: {message}"


def report(job: dict[str, Any], out: TextIO) -> int:
    """Print the job's final status and model (or error); return 0 if it succeeded, else 1."""
    status = job.get("status")
    print(f"status: {status}", file=out)
    if status == JobStatus.SUCCEEDED:
        print(f"fine-tuned model: {job.get('fine_tuned_model')}", file=out)
        return 0
    error = job.get("error") or {}
    if error.get("message"):
        print(f"error: {error['message']}", file=out)
    return 1


class EventPrinter:
    """Prints events as lines; on a terminal, `metrics` events redraw one progress line in place."""

    def __init__(self, out: TextIO, *, tty: bool) -> None:
        """Print to `out`; `tty` turns on the redrawn progress line."""
        self.out = out
        self.tty = tty
        self.bar_shown = False

    def show(self, event: dict[str, Any]) -> None:
        """Print one event."""
        data = event.get("data") or {}
        if event.get("type") == "metrics" and self.tty and "step" in data:
            self.out.write("\r" + progress_line(data) + "\x1b[K")
            self.out.flush()
            self.bar_shown = True
            return
        self.close()
        when = datetime.fromtimestamp(event["created_at"], tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        print(f"[{when}] {event.get('level', 'info')} {event.get('message', '')}", file=self.out, flush=True)

    def close(self) -> None:
        """End the progress line, if one is shown, so the next output starts on a line of its own."""
        if self.bar_shown:
            self.out.write("\n")
            self.out.flush()
            self.bar_shown = False


def progress_line(data: dict[str, Any]) -> str:
    """`step 3/10 [#######.................]  30%  loss 1.2345 …` from a metrics event's `data`."""
    step = int(data.get("step") or 0)
    total = int(data.get("total_steps") or 0)
    fraction = min(step / total, 1.0) if total > 0 else 0.0
    filled = round(fraction * BAR_WIDTH)
    line = f"step {step}/{total or '?'} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}"
    for label, name in (("loss", "train_loss"), ("valid", "valid_loss"), ("acc", "train_mean_token_accuracy")):
        value = data.get(name)
        if isinstance(value, int | float):
            line += f"  {label} {value:.4f}"
    return line

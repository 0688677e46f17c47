"""`tunewright jobs estimate FILE --model M [--epochs N]`: what a fine-tuning job would train, cost and take.

A client of a running server, like `jobs follow`: FILE (a JSONL path, uploaded for the estimate and deleted after
it, or the id of a file already uploaded) goes to `POST /v1/fine_tuning/jobs/estimate` with the project key from
TUNEWRIGHT_API_KEY or OPENAI_API_KEY, and the answer is printed as a table, warnings below it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewright.clients.cli.jobs import USAGE_ERROR, api_key, open_client, server_message
from tunewright.clients.cli.remote import add_base_url_argument, add_key_argument, format_table, resolve_base_url

if TYPE_CHECKING:
    import argparse

    import httpx

    from tunewright.storage.settings import Settings

FILE_PREFIX = "file-"


class EstimateError(Exception):
    """A failure that ends `jobs estimate` with exit status 1; its message is the one line printed."""


def add_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `jobs estimate` to the `jobs` group."""
    estimate = actions.add_parser(
        "estimate",
        help="print what a job would train, cost and take",
        description="Print what a fine-tuning job on FILE would train, cost and take, without creating it. FILE "
        "is a JSONL path (uploaded for the estimate, then deleted) or the id of an uploaded file. The API key is "
        "read from TUNEWRIGHT_API_KEY or OPENAI_API_KEY. Exit 0 with the estimate, 1 when the server refuses it.",
    )
    estimate.add_argument("file", metavar="FILE", help="a JSONL training file, or a file id (file-…)")
    estimate.add_argument(
        "--model", required=True, help="the base model, or an ft: model or checkpoint (ft:…:ckpt-step-N) to continue"
    )
    estimate.add_argument("--epochs", type=int, default=None, help="n_epochs (default: auto, as the server resolves)")
    add_base_url_argument(estimate)
    add_key_argument(estimate)
    estimate.set_defaults(handler=run_estimate)


def run_estimate(args: argparse.Namespace, settings: Settings) -> int:
    """`jobs estimate FILE --model M [--epochs N]`: print the server's estimate as a table."""
    del settings  # a client of a server: the local settings play no part
    key = api_key("jobs estimate", args.api_key)
    if key is None:
        return USAGE_ERROR
    body: dict[str, Any] = {"model": args.model}
    if args.epochs is not None:
        body["hyperparameters"] = {"n_epochs": args.epochs}
    try:
        with open_client(resolve_base_url(args.api_base_url, os.environ), key) as client:
            result = estimate_file(client, args.file, body)
    except EstimateError as exc:
        print(f"tunewright: jobs estimate: {exc}", file=sys.stderr)
        return 1
    print(render(result))
    return 0


def estimate_file(client: httpx.Client, file: str, body: dict[str, Any]) -> dict[str, Any]:
    """Ask for the estimate of `body` on `file` (uploading a path first and deleting it after).

    Raises:
        EstimateError: the file cannot be read, or the server refused or could not be reached.
    """
    uploaded = None
    if not file.startswith(FILE_PREFIX):
        path = Path(file)
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise EstimateError(f"cannot read {file}: {exc.strerror or exc}") from None
        uploaded = _json(client.post("/files", files={"file": (path.name, content)}, data={"purpose": "fine-tune"}))
        file = uploaded["id"]
    try:
        return _json(client.post("/fine_tuning/jobs/estimate", json={**body, "training_file": file}))
    finally:
        if uploaded is not None:
            client.delete(f"/files/{file}")


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.is_error:
        raise EstimateError(server_message(response))
    return response.json()


def render(result: dict[str, Any]) -> str:
    """The estimate as a two-column table, then one `warning:` line per warning."""
    cost = result["estimated_cost"]
    rows = [
        ["model", result["model"]],
        ["training file", result["training_file"]],
        ["examples", f"{result['examples']:,}"],
        ["epochs", str(result["n_epochs"])],
        ["tokens per epoch", f"{result['tokens_per_epoch']:,}"],
        ["trained tokens", f"{result['trained_tokens']:,}"],
        ["estimated cost", f"{cost['value']:.4f} {cost['currency'].upper()}"],
        ["estimated duration", duration(result["estimated_duration_seconds"])],
        ["within spend limit", "yes" if result["within_spend_limit"] else "no"],
    ]
    lines = [format_table(["", "estimate"], rows)]
    lines.extend(f"warning: {warning}" for warning in result["warnings"])
    return "\n".join(lines)


def duration(seconds: int) -> str:
    """`45s`, `12m 5s`, `3h 2m`."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"

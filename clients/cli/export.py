"""`tunewright jobs export JOB --format adapter|merged|gguf [-o PATH]`: take a fine-tuned model away as a file.

A client of a running server through the `openai` SDK (its generic `post`/`get`: the exports routes are
Tunewright's): it asks for the export (`POST /v1/fine_tuning/jobs/{id}/exports`), waits while a training worker
writes it, saying on stderr when its status changes, then downloads the file (`GET /v1/files/{id}/content`) with a
progress bar on a terminal, as `files download` does. Exit 1 if the export fails (its error is printed).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from tunewright.clients.cli.files import save_content
from tunewright.clients.cli.remote import CommandError, add_command, given

if TYPE_CHECKING:
    import argparse

    import openai

POLL_S = 1.0
ENDED = ("succeeded", "failed")


def add_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `jobs export` to the `jobs` group."""
    export = add_command(
        actions,
        "jobs export",
        run_export,
        help="export a succeeded job's model (adapter, merged or GGUF) and download it",
        description="Ask the server to export a succeeded job's model, wait while a worker writes it, then download "
        "it: 'adapter' (PEFT's files, a tar), 'merged' (the base model with the adapter merged in, with its "
        "tokenizer, a tar) or 'gguf' (one file for llama.cpp and Ollama). Exit 0 once downloaded, 1 if the export "
        "failed or the server refused it.",
        json_output=False,
    )
    export.add_argument("job_id", metavar="JOB_ID", help="the job's id (ftjob-…)")
    export.add_argument("--format", required=True, choices=("adapter", "merged", "gguf"), help="what to export")
    export.add_argument(
        "--checkpoint", metavar="MODEL", help="one of the job's checkpoint models (default: its fine-tuned model)"
    )
    export.add_argument(
        "--dtype", choices=("f16", "bf16", "f32"), help="merged: the weights' type (default: the base's)"
    )
    export.add_argument("--quantization", choices=("f16", "q8_0"), help="gguf: the tensors' type (default: f16)")
    export.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        default=None,
        help="where to write it (default: the export's filename, here; - for stdout)",
    )
    export.add_argument(
        "--poll", type=float, default=POLL_S, metavar="SECONDS", help=f"how often to ask (default: {POLL_S:g})"
    )


def run_export(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`jobs export JOB_ID --format F`: ask for the export, wait for it, download its file.

    Raises:
        CommandError: the export failed.
    """
    body = {
        "format": args.format,
        **given(checkpoint=args.checkpoint, dtype=args.dtype, quantization=args.quantization),
    }
    export = client.post(f"/fine_tuning/jobs/{args.job_id}/exports", body=body, cast_to=object)
    say(f"export {export['id']} of {export['checkpoint']} ({args.format}): {export['status']}")
    export = wait(client, args.job_id, export, poll_s=max(args.poll, 0.05))
    if export["status"] == "failed":
        error = export.get("error") or {}
        raise CommandError(f"export {export['id']} failed: {error.get('message') or 'no reason given'}")
    save_content(client, export["file_id"], args.output)


def wait(client: openai.OpenAI, job_id: str, export: dict[str, Any], *, poll_s: float) -> dict[str, Any]:
    """Poll the export until it has ended, saying on stderr when its status changes; return it."""
    status = export["status"]
    while export["status"] not in ENDED:
        time.sleep(poll_s)
        export = client.get(f"/fine_tuning/jobs/{job_id}/exports/{export['id']}", cast_to=object)
        if export["status"] != status:
            status = export["status"]
            say(f"export {export['id']}: {status}")
    return export


def say(message: str) -> None:
    """One line on stderr."""
    print(message, file=sys.stderr, flush=True)

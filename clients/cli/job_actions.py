"""`tunewright jobs create|list|get|cancel|pause|resume|events|checkpoints`: fine-tuning jobs through the SDK.

`jobs create --training-file` takes a file id or a path (uploaded first, as `files upload` does); `--follow`
then prints the job's events as `jobs follow` does, and the exit status is the job's outcome.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewright.clients.cli.files import PART_SIZE, SINGLE_REQUEST_LIMIT, upload_file
from tunewright.clients.cli.jobs import EventPrinter, follow_job
from tunewright.clients.cli.remote import (
    UsageError,
    add_command,
    given,
    page_options,
    print_json,
    print_more,
    show,
    show_page,
    when,
)

if TYPE_CHECKING:
    import argparse

    import openai

FILE_PREFIX = "file-"
JOB_FIELDS = (
    "id",
    "model",
    "status",
    "fine_tuned_model",
    "training_file",
    "validation_file",
    "method",
    "trained_tokens",
    "result_files",
    "error",
    "seed",
    "metadata",
    "created_at",
    "finished_at",
)
HYPERPARAMETER_FLAGS = (
    ("epochs", "n_epochs"),
    ("batch_size", "batch_size"),
    ("learning_rate_multiplier", "learning_rate_multiplier"),
    ("beta", "beta"),
)


def add_parsers(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the job actions that go through the SDK to the `jobs` group."""
    create = add_command(
        actions,
        "jobs create",
        run_create,
        help="create a fine-tuning job (uploading a training file path first); --follow waits for its outcome",
    )
    create.add_argument(
        "--model", required=True, help="the base model, or an ft: model or checkpoint (ft:…:ckpt-step-N) to continue"
    )
    create.add_argument(
        "--training-file", required=True, metavar="FILE", help="a file id (file-…) or a JSONL path to upload"
    )
    create.add_argument("--validation-file", metavar="FILE", help="a file id (file-…) or a JSONL path to upload")
    create.add_argument("--suffix", help="up to 64 characters in the fine-tuned model's name")
    create.add_argument("--seed", type=int, help="the job's seed")
    create.add_argument(
        "--method", choices=("supervised", "dpo", "reinforcement"), default="supervised", help="default: supervised"
    )
    create.add_argument(
        "--grader",
        metavar="JSON",
        help="reinforcement's grader: a JSON object, or the path of a file holding one (required with that method)",
    )
    create.add_argument("--epochs", type=int, help="n_epochs (default: auto)")
    create.add_argument("--batch-size", type=int, help="batch_size (default: auto)")
    create.add_argument("--learning-rate-multiplier", type=float, help="default: auto")
    create.add_argument("--beta", type=float, help="DPO's beta (default: auto)")
    create.add_argument(
        "--hyperparameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other hyperparameter, e.g. lora_rank=16 (VALUE read as JSON when it is JSON); repeatable",
    )
    create.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="a metadata pair; repeatable"
    )
    create.add_argument(
        "--follow", action="store_true", help="then print its events until it ends; exit 0 only if it succeeded"
    )

    listing = add_command(actions, "jobs list", run_list, help="list the project's jobs, newest first")
    page_options(listing, limit_help="at most this many (1-100, default: 20)")
    listing.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="only jobs with this metadata pair"
    )

    for name, function, text in (
        ("get", run_get, "print a job"),
        ("cancel", run_cancel, "cancel a job"),
        ("pause", run_pause, "pause a running job (its resume point is kept)"),
        ("resume", run_resume, "resume a paused job"),
    ):
        action = add_command(actions, f"jobs {name}", function, help=text)
        action.add_argument("job_id", metavar="JOB_ID", help="the job's id (ftjob-…)")

    events = add_command(actions, "jobs events", run_events, help="print a job's latest events, oldest first")
    events.add_argument("job_id", metavar="JOB_ID", help="the job's id (ftjob-…)")
    page_options(events, limit_help="at most this many, the newest (default: 20)")

    checkpoints = add_command(actions, "jobs checkpoints", run_checkpoints, help="list a job's checkpoints")
    checkpoints.add_argument("job_id", metavar="JOB_ID", help="the job's id (ftjob-…)")
    page_options(checkpoints, limit_help="at most this many (default: 10)")


def pairs(values: list[str], flag: str, *, parse_json: bool = False) -> dict[str, Any]:
    """`NAME=VALUE` flags as a dict (with `parse_json`, a VALUE that is JSON is read as such).

    Raises:
        UsageError: one has no `=` or an empty name.
    """
    parsed: dict[str, Any] = {}
    for value in values:
        name, equals, text = value.partition("=")
        if not equals or not name:
            raise UsageError(f"{flag} takes NAME=VALUE, got {value!r}")
        parsed[name] = text
        if parse_json:
            with contextlib.suppress(ValueError):
                parsed[name] = json.loads(text)
    return parsed


def grader(value: str | None) -> dict[str, Any]:
    """The `--grader` object: JSON given inline, or read from the file `value` names (the server checks it).

    Raises:
        UsageError: none given, the file cannot be read, or its text is not a JSON object.
    """
    if value is None:
        raise UsageError("--method reinforcement needs --grader (a JSON object or a file holding one)")
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--grader: cannot read {value}: {exc}") from exc
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise UsageError(f"--grader is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise UsageError("--grader must be a JSON object")
    return parsed


def file_id(client: openai.OpenAI, value: str) -> str:
    """`value` if it is a file id, else the id of the path `value` once uploaded."""
    if value.startswith(FILE_PREFIX):
        return value
    uploaded = upload_file(
        client, Path(value), purpose="fine-tune", single_request_limit=SINGLE_REQUEST_LIMIT, part_size=PART_SIZE
    )
    print(f"uploaded {value} as {uploaded.id}", file=sys.stderr)
    return uploaded.id


def run_create(client: openai.OpenAI, args: argparse.Namespace) -> int:
    """`jobs create`: create the job, print it, and with `--follow` follow it to its end."""
    hyperparameters = pairs(args.hyperparameter, "--hyperparameter", parse_json=True)
    for flag, name in HYPERPARAMETER_FLAGS:
        if getattr(args, flag) is not None:
            hyperparameters[name] = getattr(args, flag)
    method: dict[str, Any] = {"type": args.method}
    section: dict[str, Any] = {"hyperparameters": hyperparameters} if hyperparameters else {}
    if args.method == "reinforcement":
        section["grader"] = grader(args.grader)
    elif args.grader is not None:
        raise UsageError("--grader goes with --method reinforcement")
    if section:
        method[args.method] = section
    metadata = pairs(args.metadata, "--metadata")
    training_file = file_id(client, args.training_file)
    validation_file = None if args.validation_file is None else file_id(client, args.validation_file)
    job = client.fine_tuning.jobs.create(
        model=args.model,
        training_file=training_file,
        method=method,  # type: ignore[arg-type]
        **given(validation_file=validation_file, suffix=args.suffix, seed=args.seed, metadata=metadata or None),
    )
    if args.json:
        print_json(job)
    else:
        print(f"created {job.id} ({job.status})", flush=True)
    if args.follow:
        return follow_job(str(client.base_url).rstrip("/"), client.api_key, job.id)
    return 0


def run_list(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`jobs list`: one page of jobs as a table (or JSON)."""
    metadata = pairs(args.metadata, "--metadata")
    page = client.fine_tuning.jobs.list(**given(limit=args.limit, after=args.after, metadata=metadata or None))
    show_page(
        page,
        args,
        ["ID", "MODEL", "STATUS", "FINE-TUNED MODEL", "TRAINED TOKENS", "CREATED"],
        lambda job: [job.id, job.model, job.status, job.fine_tuned_model, job.trained_tokens, when(job.created_at)],
        empty="no fine-tuning jobs",
        command="jobs list",
    )


def run_get(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`jobs get JOB_ID`."""
    show(client.fine_tuning.jobs.retrieve(args.job_id), args, JOB_FIELDS)


def run_cancel(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`jobs cancel JOB_ID`."""
    show(client.fine_tuning.jobs.cancel(args.job_id), args, JOB_FIELDS)


def run_pause(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`jobs pause JOB_ID`."""
    show(client.fine_tuning.jobs.pause(args.job_id), args, JOB_FIELDS)


def run_resume(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`jobs resume JOB_ID`."""
    show(client.fine_tuning.jobs.resume(args.job_id), args, JOB_FIELDS)


def run_events(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`jobs events JOB_ID`: the newest events (one page), printed oldest first as `jobs follow` prints them."""
    page = client.fine_tuning.jobs.list_events(args.job_id, **given(limit=args.limit, after=args.after))
    if args.json:
        print_json(page)
        return
    printer = EventPrinter(sys.stdout, tty=False)
    for event in reversed(page.data):
        printer.show(event.to_dict(mode="json"))
    if not page.data:
        print("no events")
    print_more(page, f"jobs events {args.job_id}")


def run_checkpoints(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`jobs checkpoints JOB_ID`: the job's checkpoints with their metrics, newest first."""
    page = client.fine_tuning.jobs.checkpoints.list(args.job_id, **given(limit=args.limit, after=args.after))
    show_page(
        page,
        args,
        ["STEP", "MODEL", "TRAIN LOSS", "VALID LOSS", "FULL VALID LOSS", "PROBE LOSS", "CREATED"],
        lambda checkpoint: [
            checkpoint.step_number,
            checkpoint.fine_tuned_model_checkpoint,
            _number(checkpoint.metrics.train_loss),
            _number(checkpoint.metrics.valid_loss),
            _number(checkpoint.metrics.full_valid_loss),
            probe_loss(checkpoint.metrics.to_dict()),
            when(checkpoint.created_at),
        ],
        empty="no checkpoints",
        command=f"jobs checkpoints {args.job_id}",
    )


def probe_loss(metrics: dict[str, Any]) -> str | None:
    """The forgetting check's loss on the general probe set and its change from the base model's: `2.5012 (+2.9%)`.

    None for a job without the check.
    """
    probe, base = metrics.get("probe_loss"), metrics.get("probe_loss_base")
    if not isinstance(probe, int | float):
        return None
    if not isinstance(base, int | float) or base <= 0:
        return f"{probe:.4f}"
    return f"{probe:.4f} ({(probe - base) / base:+.1%})"


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"

"""`tunewright import`: move fine-tuning jobs, with their files, from an OpenAI-compatible service to this server.

The source (`--from-base-url`, `--from-api-key`) is read through the `openai` SDK: every job of the key's project
(each page of `GET /fine_tuning/jobs`) or the jobs named, and their training and validation files. This server is
the destination, reached as by every client command (`--base-url`, `--api-key`). Each job is recreated here with
its method (supervised, DPO, or reinforcement with its grader), the hyperparameters it set (`auto` stays auto), its
suffix, seed and metadata, on the base model `--model-map` maps its model to (a model grader's model is mapped the
same way), and with `imported_from: <source job id>` added to its metadata.
Its files are copied first (import_files.py: bytes, filename and purpose kept; one copy per file; from
`--files-from DIR` for a source that refuses to send them, as OpenAI does with `fine-tune` files).

Nothing is done twice: a job here whose metadata says `imported_from` a source job, or, for a source job whose
metadata has no room for that key, a job here with the same model, files, method, seed, suffix and metadata, is
that job's import; a file here with the same name, size, purpose and bytes is that file's copy. `--dry-run`
changes nothing here: it prints the plan, with the cost estimate of each job whose files are here already
(`--estimate` uploads the others for the estimate and deletes them after).
"""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewright.clients.cli.import_files import FileCopier, FileGoneError, SourceError, SourceFile
from tunewright.clients.cli.remote import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    UsageError,
    add_command,
    describe,
    given,
    make_client,
    print_json,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Sequence

    import openai

IMPORTED_FROM = "imported_from"
# OpenAI's limits on metadata, which this server enforces too.
MAX_METADATA_PAIRS = 16
MAX_METADATA_VALUE = 512
METHODS = ("supervised", "dpo", "reinforcement")
MODEL_GRADERS = ("score_model", "label_model")
SNAPSHOT_DATE = re.compile(r"-\d{4}-\d{2}-\d{2}$")
"""A dated snapshot's tail (`gpt-4o-mini-2024-07-18`): a mapping of `gpt-4o-mini` covers it."""
JOB_PAGE = 100


@dataclass(slots=True)
class JobPlan:
    """What the import does with one source job, and then what it did.

    `action` is `import` (to do), `imported` (done by this run), `exists` (imported before: `job_id`), `skip`
    (`reason`) or `failed` (`reason`).
    """

    source_id: str
    source_model: str = ""
    source_status: str = ""
    model: str | None = None
    method: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # the source's training file, then its validation file
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    action: str = "import"
    reason: str | None = None
    job_id: str | None = None
    estimate: dict[str, Any] | None = None
    files_here: bool = True  # a dry run without --estimate: False when a file has no copy here yet

    def end(self, action: str, reason: str | None = None, job_id: str | None = None) -> None:
        """Settle the plan: `skip`, `failed`, `exists` or `imported`."""
        self.action, self.reason, self.job_id = action, reason, job_id

    @property
    def marked(self) -> bool:
        """Whether the job here will carry `imported_from` (its source's metadata had room for it)."""
        return self.metadata.get(IMPORTED_FROM) == self.source_id

    def to_json(self) -> dict[str, Any]:
        """What `--json` prints of it."""
        return {
            "source_job": self.source_id,
            "source_model": self.source_model,
            "source_status": self.source_status,
            "model": self.model,
            "files": self.files,
            "action": self.action,
            "reason": self.reason,
            "job": self.job_id,
            "notes": self.notes,
            "estimate": self.estimate,
        }


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `import` command."""
    parser = add_command(
        subcommands,
        "import",
        run_import,
        help="copy fine-tuning jobs and their files from an OpenAI-compatible service to this server",
        description="Copy the fine-tuning jobs of the source key's project (all, or those named), with their "
        "training and validation files, from an OpenAI-compatible service to this server (--base-url, --api-key), "
        "on the base models --model-map names. Jobs and files imported before are not imported again. Exit 0 "
        "when every job was imported, was already, or was skipped for the reason printed; 1 when one failed.",
    )
    parser.add_argument("--from-base-url", required=True, metavar="URL", help="the source's base URL (…/v1)")
    parser.add_argument("--from-api-key", required=True, metavar="KEY", help="a key of the source's project")
    parser.add_argument(
        "--jobs",
        nargs="+",
        default=["all"],
        metavar="ID",
        help="the source jobs to import: all (the default) or their ids (ftjob-…)",
    )
    parser.add_argument(
        "--model-map",
        action="append",
        default=[],
        metavar="SRC=DST",
        help="train jobs of the source model SRC on this server's model DST (gpt-4o-mini=smollm2-135m-instruct "
        "also covers gpt-4o-mini-2024-07-18); repeatable. Jobs of an unmapped model are skipped",
    )
    parser.add_argument(
        "--files-from",
        type=Path,
        metavar="DIR",
        help="your copies of the source's files, by filename, for a source that will not send them (OpenAI keeps "
        "fine-tune files to itself); used when the source refuses, and only with the size it states",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing here")
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="with --dry-run: upload the files not here yet for the cost estimate, and delete them after it",
    )


def run_import(client: openai.OpenAI, args: argparse.Namespace) -> int:
    """`import`: plan every job, then copy and create (or, with `--dry-run`, estimate); print the outcome."""
    mapping = model_map(args.model_map)
    wanted = job_ids(args.jobs)
    if args.estimate and not args.dry_run:
        raise UsageError("--estimate goes with --dry-run")
    source_url = args.from_base_url.rstrip("/")
    with (
        make_client(source_url, args.from_api_key, admin=False) as source,
        tempfile.TemporaryDirectory(prefix="tunewright-import-") as workdir,
    ):
        plans = [plan_job(job, mapping) for job in source_jobs(source, wanted, source_url)]
        plans.extend(missing_jobs(plans, wanted))
        here = Destination(client)
        copier = FileCopier(source, client, source_url=source_url, workdir=Path(workdir), local_dir=args.files_from)
        settle_known(plans, here, copier)
        if args.dry_run:
            preview(plans, here, copier, client, temporary=args.estimate)
        else:
            execute(plans, here, copier, client)
    report(plans, copier, args)
    return EXIT_FAILED if any(plan.action == "failed" for plan in plans) else EXIT_OK


def model_map(values: Sequence[str]) -> dict[str, str]:
    """`--model-map SRC=DST` flags as a dict.

    Raises:
        UsageError: one is not `SRC=DST`, or maps one source model twice.
    """
    mapping: dict[str, str] = {}
    for value in values:
        source, equals, target = value.partition("=")
        if not equals or not source or not target:
            raise UsageError(f"--model-map takes SRC=DST, got {value!r}")
        if mapping.get(source, target) != target:
            raise UsageError(f"--model-map maps {source} twice")
        mapping[source] = target
    return mapping


def job_ids(values: Sequence[str]) -> list[str] | None:
    """The job ids `--jobs` names, or None for all.

    Raises:
        UsageError: `all` is mixed with ids.
    """
    if list(values) == ["all"]:
        return None
    if "all" in values:
        raise UsageError("--jobs takes all, or job ids")
    return list(dict.fromkeys(values))


def source_jobs(source: openai.OpenAI, wanted: list[str] | None, source_url: str) -> list[dict[str, Any]]:
    """The source jobs to import, oldest first (every page), or those named (a 404 leaves one out).

    Raises:
        CommandError: the source refused the list or could not be reached.
    """
    import openai

    try:
        if wanted is None:
            return all_jobs(source)[::-1]
        jobs = []
        for job_id in wanted:
            try:
                jobs.append(source.get(f"/fine_tuning/jobs/{job_id}", cast_to=object))
            except openai.NotFoundError:
                continue
        return jobs
    except openai.OpenAIError as exc:
        raise CommandError(f"the source: {describe(exc, source_url)}") from None


def all_jobs(client: openai.OpenAI) -> list[dict[str, Any]]:
    """Every job of the client's project as the server sent it, newest first (each page of `GET /fine_tuning/jobs`).

    The JSON itself, not the SDK's models: those read a `multi` grader as a `string_check` one, and the import
    sends back what it read.
    """
    jobs: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": JOB_PAGE}
    while True:
        page = client.get("/fine_tuning/jobs", cast_to=object, options={"params": params})
        data = page.get("data") or []
        jobs.extend(data)
        if not page.get("has_more") or not data:
            return jobs
        params["after"] = data[-1]["id"]


def missing_jobs(plans: Sequence[JobPlan], wanted: list[str] | None) -> list[JobPlan]:
    """A failed plan for each job named with `--jobs` that the source does not have."""
    found = {plan.source_id for plan in plans}
    missing = [JobPlan(source_id=job_id) for job_id in wanted or () if job_id not in found]
    for plan in missing:
        plan.end("failed", "the source has no such job")
    return missing


def plan_job(job: dict[str, Any], mapping: dict[str, str]) -> JobPlan:
    """What to create here for a source job (its JSON), or why it is skipped; needs no request."""
    files = [name for name in (job.get("training_file"), job.get("validation_file")) if name]
    plan = JobPlan(
        source_id=job["id"], source_model=job.get("model") or "", source_status=job.get("status") or "", files=files
    )
    method_type, hyperparameters = source_method(job)
    if method_type not in METHODS:
        plan.end("skip", f"its method {method_type!r} is not supported here (only {', '.join(METHODS)})")
        return plan
    plan.model = mapped_model(plan.source_model, mapping)
    if plan.model is None:
        hint = f"--model-map {plan.source_model}=MODEL"
        if plan.source_model.startswith("ft:"):
            plan.end("skip", f"its model {plan.source_model} is a fine-tuned model with no mapping ({hint})")
        else:
            plan.end("skip", f"no mapping for its model {plan.source_model} ({hint})")
        return plan
    chosen = {name: value for name, value in hyperparameters.items() if value is not None and value != "auto"}
    section: dict[str, Any] = {"hyperparameters": chosen} if chosen else {}
    if method_type == "reinforcement":
        grader = ((job.get("method") or {}).get("reinforcement") or {}).get("grader")
        if not isinstance(grader, dict):
            plan.end("skip", "its reinforcement method names no grader")
            return plan
        try:
            section["grader"] = mapped_grader(grader, mapping)
        except KeyError as exc:
            plan.end("skip", f"no mapping for its grader's model {exc.args[0]} (--model-map {exc.args[0]}=MODEL)")
            return plan
    plan.method = {"type": method_type, method_type: section} if section else {"type": method_type}
    plan.suffix = source_suffix(job)
    plan.seed = job.get("seed")
    plan.metadata = marked_metadata(job.get("metadata") or {}, plan.source_id, plan.notes)
    if job.get("integrations"):
        plan.notes.append("its integrations (Weights & Biases) are not copied")
    return plan


def source_method(job: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The job's method type and its hyperparameters (a job without `method` is supervised, as OpenAI's were)."""
    method = job.get("method") or {}
    method_type = method.get("type") or "supervised"
    section = method.get(method_type) or {}
    hyperparameters = section.get("hyperparameters") if isinstance(section, dict) else None
    if hyperparameters is None and method_type == "supervised":
        hyperparameters = job.get("hyperparameters")
    return str(method_type), dict(hyperparameters or {})


def mapped_grader(grader: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """A copy of `grader` whose model graders (a `multi`'s too) call the models `mapping` maps theirs to.

    This server runs a model grader on its job's own base model: one mapped to another model is refused when the
    job is created (and the import of that job fails, saying so).

    Raises:
        KeyError: a model grader's model has no mapping (the model is the error's argument).
    """
    copy = dict(grader)
    if copy.get("type") in MODEL_GRADERS and isinstance(copy.get("model"), str):
        target = mapped_model(copy["model"], mapping)
        if target is None:
            raise KeyError(copy["model"])
        copy["model"] = target
    graders = copy.get("graders")
    if isinstance(graders, dict) and "type" in graders:  # one sub-grader
        copy["graders"] = mapped_grader(graders, mapping)
    elif isinstance(graders, dict):  # named sub-graders, as OpenAI's `multi` has them
        copy["graders"] = {
            name: mapped_grader(sub, mapping) if isinstance(sub, dict) else sub for name, sub in graders.items()
        }
    elif isinstance(graders, list):
        copy["graders"] = [mapped_grader(sub, mapping) if isinstance(sub, dict) else sub for sub in graders]
    return copy


def mapped_model(model: str, mapping: dict[str, str]) -> str | None:
    """The model `--model-map` maps `model` to: its own entry, else (a base model) its undated name's."""
    if model in mapping:
        return mapping[model]
    if model.startswith("ft:"):
        return None
    undated = SNAPSHOT_DATE.sub("", model)
    return mapping.get(undated) if undated != model else None


def source_suffix(job: dict[str, Any]) -> str | None:
    """The suffix the job was created with: `user_provided_suffix`, else the one in its model's name."""
    suffix = job.get("user_provided_suffix")
    if suffix:
        return str(suffix)
    parts = str(job.get("fine_tuned_model") or "").split(":")
    if len(parts) == 5 and parts[0] == "ft" and parts[3]:  # ft:<base>:<org>:<suffix>:<id>
        return parts[3]
    return None


def marked_metadata(metadata: dict[str, str], source_id: str, notes: list[str]) -> dict[str, str]:
    """The source metadata with `imported_from: <source job id>` added, when OpenAI's limits leave room."""
    pairs = dict(metadata)
    previous = pairs.get(IMPORTED_FROM)
    if previous is None and len(pairs) >= MAX_METADATA_PAIRS:
        notes.append(
            f"its metadata holds {MAX_METADATA_PAIRS} pairs already, so {IMPORTED_FROM} is not added (a re-run "
            "recognises its import by model, files, method, seed, suffix and metadata)"
        )
        return pairs
    if len(source_id) > MAX_METADATA_VALUE:
        notes.append(f"its id is longer than {MAX_METADATA_VALUE} characters: {IMPORTED_FROM} is not added")
        return pairs
    if previous is not None and previous != source_id:
        notes.append(f"its metadata {IMPORTED_FROM}={previous} is replaced by {source_id}")
    pairs[IMPORTED_FROM] = source_id
    return pairs


class Destination:
    """This server's jobs, read once: which source jobs were imported already, and as what."""

    def __init__(self, client: openai.OpenAI) -> None:
        """Read every job of the project (each page)."""
        self.client = client
        self.jobs = all_jobs(client)
        self.by_source: dict[str, str] = {}
        for job in reversed(self.jobs):  # oldest first: the first import of a source job wins
            source_id = (job.get("metadata") or {}).get(IMPORTED_FROM)
            if source_id:
                self.by_source.setdefault(source_id, job["id"])
        self.models: dict[str, bool] = {}

    def imported(self, plan: JobPlan, files: Sequence[str | None]) -> str | None:
        """The job here that is `plan`'s import: by `imported_from`, else (no room for it) by its settings."""
        if plan.source_id in self.by_source:
            return self.by_source[plan.source_id]
        if plan.marked or None in files:
            return None
        pair = [*files, None][:2]  # training, validation (None without one)
        want = fingerprint(plan.model, plan.method.get("type"), pair, plan.seed, plan.suffix, plan.metadata)
        for job in self.jobs:
            method = (job.get("method") or {}).get("type") or "supervised"
            have = fingerprint(
                job.get("model"),
                method,
                [job.get("training_file"), job.get("validation_file")],
                job.get("seed"),
                job.get("user_provided_suffix"),
                job.get("metadata") or {},
            )
            if have == want:
                return str(job["id"])
        return None

    def has_model(self, model: str) -> bool:
        """Whether this server knows `model` (asked once per model)."""
        import openai

        if model not in self.models:
            try:
                self.client.models.retrieve(model)
                self.models[model] = True
            except openai.NotFoundError:
                self.models[model] = False
        return self.models[model]

    def add(self, plan: JobPlan, job: dict[str, Any]) -> None:
        """Remember a job this run created."""
        self.jobs.insert(0, job)
        self.by_source.setdefault(plan.source_id, job["id"])


def fingerprint(*parts: Any) -> str:
    """The settings a job is recognised by when it carries no `imported_from`."""
    import json

    return json.dumps(parts, sort_keys=True, default=str)


def settle_known(plans: Iterable[JobPlan], here: Destination, copier: FileCopier) -> None:
    """Mark the jobs imported before, then skip those whose model is unknown here or whose files are gone."""
    for plan in plans:
        if plan.source_id in here.by_source:
            plan.end("exists", job_id=here.by_source[plan.source_id])
        if plan.action != "import":
            continue
        assert plan.model is not None
        if not here.has_model(plan.model):
            plan.end("skip", f"this server has no model {plan.model}")
            continue
        gone = [file_id for file_id in plan.files if copier.describe(file_id).missing]
        if gone:
            plan.end("skip", f"{', '.join(gone)} no longer exists at the source")


def create_body(plan: JobPlan, files: Sequence[str | None]) -> dict[str, Any]:
    """The `POST /fine_tuning/jobs` body of `plan` with the files' ids here."""
    training, *rest = files
    validation = rest[0] if rest else None
    return {
        "model": plan.model,
        "training_file": training,
        "method": plan.method,
        **given(validation_file=validation, suffix=plan.suffix, seed=plan.seed, metadata=plan.metadata or None),
    }


def execute(plans: Iterable[JobPlan], here: Destination, copier: FileCopier, client: openai.OpenAI) -> None:
    """Copy each job's files (once) and create it here, unless its import is found; say each step on stderr."""
    import openai

    base_url = str(client.base_url).rstrip("/")
    for plan in plans:
        if plan.action != "import":
            continue
        try:
            files = [copy_file(copier, copier.describe(file_id)) for file_id in plan.files]
            existing = here.imported(plan, files)
            if existing is not None:
                plan.end("exists", job_id=existing)
                continue
            job: dict[str, Any] = client.post("/fine_tuning/jobs", body=create_body(plan, files), cast_to=object)
        except FileGoneError as exc:
            plan.end("skip", f"a file no longer exists at the source ({exc})")
        except SourceError as exc:
            plan.end("failed", str(exc))
        except openai.APIStatusError as exc:
            plan.end("failed", describe(exc, base_url))
        else:
            here.add(plan, job)
            plan.end("imported", job_id=job["id"])
            progress(f"imported {plan.source_id} as {job['id']} ({plan.source_model} -> {plan.model})")


def copy_file(copier: FileCopier, record: SourceFile) -> str:
    """The id here of a source file, copied now unless it is here already (said on stderr)."""
    found = copier.find_here(record)
    if found is not None:
        return found
    copied = copier.copy(record)
    progress(f"copied {record.id} ({record.filename}, {record.bytes:,} bytes) as {copied}")
    return copied


def preview(
    plans: Iterable[JobPlan], here: Destination, copier: FileCopier, client: openai.OpenAI, *, temporary: bool
) -> None:
    """Estimate each job to import whose files are here (with `temporary`, upload the others for it)."""
    import openai

    base_url = str(client.base_url).rstrip("/")
    try:
        for plan in plans:
            if plan.action != "import":
                continue
            try:
                files = [here_or_temporary(copier, copier.describe(file_id), temporary) for file_id in plan.files]
                existing = here.imported(plan, files)
                if existing is not None:
                    plan.end("exists", job_id=existing)
                elif None in files:
                    plan.files_here = False
                else:
                    body = create_body(plan, files)
                    plan.estimate = client.post("/fine_tuning/jobs/estimate", body=body, cast_to=object)
            except FileGoneError as exc:
                plan.end("skip", f"a file no longer exists at the source ({exc})")
            except SourceError as exc:
                plan.end("failed", str(exc))
            except openai.APIStatusError as exc:
                plan.notes.append(f"no estimate: {describe(exc, base_url)}")
    finally:
        copier.delete_temporary()


def here_or_temporary(copier: FileCopier, record: SourceFile, temporary: bool) -> str | None:
    """The file's copy here; else, with `temporary`, an upload deleted after the estimates; else None."""
    found = copier.find_here(record)
    if found is not None or not temporary:
        return found
    return copier.copy(record, temporary=True)


def progress(message: str) -> None:
    """One line of progress on stderr."""
    print(message, file=sys.stderr, flush=True)


RESULTS = {
    "import": "will import",
    "imported": "imported as {job}",
    "exists": "already imported as {job}",
    "skip": "skipped: {reason}",
    "failed": "failed: {reason}",
}


def report(plans: Sequence[JobPlan], copier: FileCopier, args: argparse.Namespace) -> None:
    """Print the plans as a table (notes and a summary under it), or as JSON with `--json`."""
    if args.json:
        files = [record.to_json() for record in copier.files.values()]
        print_json({"dry_run": args.dry_run, "jobs": [plan.to_json() for plan in plans], "files": files})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=True)
    for header in ("SOURCE JOB", "MODEL", "FILES", "ESTIMATE", "RESULT"):
        table.add_column(header, overflow="fold")
    for plan in plans:
        model = plan.source_model if plan.model is None else f"{plan.source_model} -> {plan.model}"
        files = "\n".join(file_cell(copier.files.get(file_id), file_id) for file_id in plan.files)
        result = RESULTS[plan.action].format(job=plan.job_id, reason=plan.reason)
        table.add_row(f"{plan.source_id}\n{plan.source_status}", model, files, estimate_cell(plan), result)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    for plan in plans:
        for note in plan.notes:
            console.print(f"{plan.source_id}: {note}", highlight=False, markup=False)
    console.print(summary(plans, dry_run=args.dry_run), highlight=False, markup=False)


def file_cell(record: SourceFile | None, file_id: str) -> str:
    """`name (1,234 bytes)` over its id, or its id and why it is not there."""
    if record is None:
        return file_id
    if record.missing:
        return f"gone at the source\n{file_id}"
    return f"{record.filename} ({record.bytes:,} bytes)\n{file_id}"


def estimate_cell(plan: JobPlan) -> str:
    """Trained tokens and cost from the server's estimate, `-` without one."""
    if plan.estimate is None:
        return "-"
    cost = plan.estimate["estimated_cost"]
    return f"{plan.estimate['trained_tokens']:,} tokens\n{cost['value']:.4f} {cost['currency'].upper()}"


def summary(plans: Sequence[JobPlan], *, dry_run: bool) -> str:
    """`2 to import, 1 already imported, 1 skipped` (a dry run) or `imported 2, …`."""
    counts = {action: sum(plan.action == action for plan in plans) for action in RESULTS}
    if dry_run:
        text = f"{counts['import']} to import, {counts['exists']} already imported, {counts['skip']} skipped"
        text += f", {counts['failed']} failed" if counts["failed"] else ""
        waiting = sum(plan.action == "import" and not plan.files_here for plan in plans)
        if waiting:
            text += (
                f"; {waiting} without an estimate, which needs the files on this server (--estimate uploads them "
                "for it and deletes them after)"
            )
        return text
    return (
        f"imported {counts['imported']}, already imported {counts['exists']}, skipped {counts['skip']}, "
        f"failed {counts['failed']}"
    )

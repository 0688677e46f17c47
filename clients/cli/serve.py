"""`tunewright serve`: prepare the data, then run the API on granian until Ctrl-C or SIGTERM.

Before the server starts, `serve` creates and migrates the data dir, sweeps what a crash may have left
(blob temp files, expired uploads) and, on the first start with an empty database, creates the `default`
organization and project and prints one key for it. granian then loads `tunewright.api.asgi:create_app_from_env`
in each worker process; the settings reach the workers through `TUNEWRIGHT_*` environment variables. Once
granian listens, `serve` starts and supervises its embedded trainers (`clients/cli/supervise.py`). With
`--workers` above 1 the workers share their Prometheus counters in a temporary directory (`share_metrics`).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from tunewright.clients.cli.datadir import open_data
from tunewright.clients.cli.keys import KeyCreated, slugify
from tunewright.clients.cli.supervise import TrainerSupervisor
from tunewright.storage.api_keys import mint_api_key
from tunewright.storage.audit import OPERATOR_ACTOR
from tunewright.storage.ids import new_id
from tunewright.storage.records import OrganizationRecord, ProjectRecord
from tunewright.storage.settings import ENV_PREFIX, SettingsError
from tunewright.storage.supervision import METRICS_DIR_ENV, STATUS_FILE_ENV, remove_leftovers, status_path
from tunewright.storage.sweeps import sweep_expired_uploads, sweep_orphan_blobs, sweep_stale_multipart

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from tunewright.storage.base import MetadataStore, Stores
    from tunewright.storage.settings import Settings

ASGI_TARGET = "tunewright.api.asgi:create_app_from_env"
DEFAULT_ORGANIZATION = "default"
DEFAULT_PROJECT = "default"
TEMP_SWEEP_AGE_S = 3600
"""Blob temp files older than this belong to a crashed put (a live put keeps touching its file)."""


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `serve` command."""
    parser = subcommands.add_parser(
        "serve",
        help="run the API (embedded mode: SQLite + local files by default)",
        description="Create and migrate the data dir, then serve the OpenAI-compatible API.",
    )
    parser.add_argument("--host", default=None, help="address to listen on (default: $TUNEWRIGHT_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: $TUNEWRIGHT_PORT)")
    parser.add_argument("--workers", type=int, default=1, help="API worker processes (default: 1)")
    parser.add_argument(
        "--trainers",
        type=int,
        default=None,
        help="training worker processes to start alongside the API, each a `tunewright worker` subprocess "
        "restarted if it exits; 0 trains nowhere in this process tree (default: $TUNEWRIGHT_TRAINERS, else 1)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Prepare the data, start the API server and block until it stops; return the exit status."""
    if args.workers < 1:
        print("tunewright: serve: --workers must be at least 1", file=sys.stderr)
        return 2
    log_level = granian_log_level(settings.log_level)
    silence_progress_bars()
    metrics_dir = share_metrics(args.workers)
    try:
        first = prepare(settings)
        if first is not None:
            print_first_start(first)
        export_worker_env(args.config, args.settings_overrides)
        supervisor = trainer_supervisor(settings)
        try:
            return serve_api(settings, workers=args.workers, log_level=log_level, supervisor=supervisor)
        finally:
            if supervisor is not None:
                supervisor.stop()
    finally:
        if metrics_dir is not None:
            # Forget the directory with its contents: a later process started from this one (a test run, an
            # embedding program) must not inherit a name that points nowhere.
            if os.environ.get(METRICS_DIR_ENV) == metrics_dir:
                del os.environ[METRICS_DIR_ENV]
            shutil.rmtree(metrics_dir, ignore_errors=True)


def share_metrics(workers: int) -> str | None:
    """With several API workers, a directory where they share their Prometheus counters; return it to remove.

    granian's workers listen on one port, so a scrape reaches one of them: each must report every worker's
    counters (api/metrics.py). `PROMETHEUS_MULTIPROC_DIR` names the directory to the workers; it is set here,
    before anything imports prometheus_client. A directory the operator named already is used as it is (and
    emptying it between runs is theirs to do); None is returned then, and with one worker.
    """
    if workers < 2 or os.environ.get(METRICS_DIR_ENV):
        return None
    path = tempfile.mkdtemp(prefix="tunewright-metrics-")
    os.environ[METRICS_DIR_ENV] = path
    return path


def prepare(settings: Settings) -> KeyCreated | None:
    """Create and migrate the data, sweep leftovers, and make the default tenant on a first start.

    Returns:
        The key created for the default project on a first start, else None.
    """
    with open_data(settings) as data:
        sweep_leftovers(data.stores, settings)
        return bootstrap_default_tenant(data.stores.metadata)


def sweep_leftovers(stores: Stores, settings: Settings) -> None:
    """Remove what a crash left: temp files, unpublished blobs and S3 multipart uploads of writes, old uploads.

    In the embedded mode (SQLite + a local directory) this process is the only writer, so everything a
    previous run left unpublished is an orphan now; with shared production stores other replicas may be
    writing, so only leftovers older than the configured age go.
    """
    exclusive = settings.database_url.startswith("sqlite:") and settings.blob_url.startswith("file:")
    sweep_temp = getattr(stores.blobs, "sweep_temp", None)
    if sweep_temp is not None:
        sweep_temp(0 if exclusive else TEMP_SWEEP_AGE_S)
    if exclusive:
        sweep_orphan_blobs(stores, older_than_s=0, now=int(time.time()) + 1)
    else:
        sweep_orphan_blobs(stores, older_than_s=settings.orphan_blob_age_s)
    sweep_stale_multipart(stores, older_than_s=settings.orphan_blob_age_s)
    sweep_expired_uploads(stores, ttl_s=settings.upload_ttl_s)


def bootstrap_default_tenant(metadata: MetadataStore) -> KeyCreated | None:
    """On an empty database (no key, no `default` organization), create `default`/`default` and one key.

    One transaction under the store's tenants lock: of several replicas starting at once on an empty database,
    exactly one creates them and prints the key; the others find them made.
    """
    created = int(time.time())
    organization = OrganizationRecord(
        id=new_id("org"), name=DEFAULT_ORGANIZATION, slug=slugify(DEFAULT_ORGANIZATION), created_at=created
    )
    project = ProjectRecord(
        id=new_id("project"), organization_id=organization.id, name=DEFAULT_PROJECT, created_at=created
    )
    record, secret = mint_api_key(
        organization_id=organization.id, project_id=project.id, name="default", kind="project"
    )
    if not metadata.create_first_tenant(organization, project, record, actor=OPERATOR_ACTOR):
        return None
    return KeyCreated(record, secret, organization, project)


def print_first_start(created: KeyCreated) -> None:
    """Print the first-start block; the secret is its last line."""
    print(
        f"First start: created organization '{DEFAULT_ORGANIZATION}', project '{DEFAULT_PROJECT}'. "
        "API key (shown once):"
    )
    print(created.secret, flush=True)


def silence_progress_bars() -> None:
    """Keep the model libraries' tqdm bars (weight loading, hub transfers, GGUF imports) out of a server's log.

    transformers follows huggingface_hub's switch, read at import; its GGUF import calls tqdm directly, which
    reads `TQDM_DISABLE`. Both are set before anything is imported, here and in every subprocess (granian's
    workers and the trainers inherit them). `HF_HUB_DISABLE_PROGRESS_BARS=0` / `TQDM_DISABLE=0` in the
    environment bring them back.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")


def export_worker_env(config_path: str | None, overrides: dict[str, Any]) -> None:
    """Pass `--config` and the command-line overrides to granian's worker processes via the environment."""
    if config_path:
        os.environ[ENV_PREFIX + "CONFIG"] = config_path
    for name, value in overrides.items():
        os.environ[ENV_PREFIX + name.upper()] = str(value)


def trainer_supervisor(settings: Settings) -> TrainerSupervisor | None:
    """The supervisor of the embedded trainers (`--trainers` / `TUNEWRIGHT_TRAINERS`), or None for none.

    Each trainer is `tunewright worker` with the same settings (they reach it through the environment, as they
    reach granian's workers), so the embedded mode trains with no other command. Its status file is named to
    the API processes through the environment, for /healthz and /metrics.
    """
    if settings.trainers == 0:
        return None
    path = status_path(settings.data_path, os.getpid())
    remove_leftovers(path.parent)
    os.environ[STATUS_FILE_ENV] = str(path)
    return TrainerSupervisor(settings.trainers, path)


def granian_log_level(level: str) -> Any:
    """Return granian's log level for `TUNEWRIGHT_LOG_LEVEL`.

    Raises:
        SettingsError: not a level granian knows.
    """
    from granian.log import LogLevels  # lazy: only serve needs granian

    try:
        return LogLevels(level.lower())
    except ValueError as exc:
        allowed = ", ".join(member.value.upper() for member in LogLevels)
        raise SettingsError(f"TUNEWRIGHT_LOG_LEVEL: expected one of {allowed}, got {level!r}") from exc


def base_url(settings: Settings) -> str:
    """Return the URL the server listens on (IPv6 hosts in brackets)."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def serve_api(settings: Settings, *, workers: int, log_level: Any, supervisor: TrainerSupervisor | None) -> int:
    """Run granian with the API's app factory until SIGINT/SIGTERM; return the exit status.

    The trainers start once granian listens (a port in use starts none).
    """
    url = base_url(settings)
    banner = f"Tunewright API listening on {url} (OpenAI base_url: {url}/v1); Ctrl-C to stop"
    hooks = [supervisor.start] if supervisor is not None else []
    return run_granian(
        settings, ASGI_TARGET, workers=workers, log_level=log_level, banner=banner, command="serve", on_startup=hooks
    )


def run_granian(
    settings: Settings,
    target: str,
    *,
    workers: int,
    log_level: Any,
    banner: str,
    command: str,
    on_startup: Sequence[Callable[[], None]] = (),
) -> int:
    """Serve the ASGI app factory `target` on granian until SIGINT/SIGTERM; return the exit status.

    `on_startup` runs in this process once the port is bound, before granian starts its workers. A port that
    cannot be bound is one line on stderr naming `command` and exit status 1.
    """
    from granian import Granian
    from granian.constants import Interfaces

    server = Granian(
        target,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_level=log_level,
        # Our own loggers print through granian's console handler at TUNEWRIGHT_LOG_LEVEL.
        log_dictconfig={"root": {"handlers": ["console"], "level": settings.log_level.upper()}},
    )
    url = base_url(settings)

    def announce() -> None:
        print(banner, flush=True)

    server.on_startup(announce)
    for hook in on_startup:
        server.on_startup(hook)
    try:
        server.serve()
    except (OSError, RuntimeError) as exc:
        # granian reports a failed bind as RuntimeError("Address already in use (os error 98)").
        if isinstance(exc, RuntimeError) and "os error" not in str(exc):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"tunewright: {command}: cannot listen on {url}: {reason}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # granian exits non-zero when a worker died
        return exc.code if isinstance(exc.code, int) else 1
    return 0

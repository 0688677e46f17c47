"""`tunewright worker`: a training worker that claims fine-tuning jobs (and model exports) from the queue and runs them.

One per GPU in production (any number of nodes, all on the same PostgreSQL and S3); `tunewright serve` starts
one as a subprocess in the embedded mode. SIGTERM or Ctrl-C lets the current optimizer step finish, saves a
resume point and gives the job back to the queue, then exits 0; a job still being prepared (files checked,
model imported) goes back without training. A second signal stops at once: the job's lease expires and another
worker resumes it from its last resume point. It writes exports of fine-tuned models too (`POST
/v1/fine_tuning/jobs/{id}/exports`), taking jobs and exports in turn; SIGTERM lets an export being written finish.

As it starts, a worker imports the packaged base models (`pkg:…`) not imported yet on a background thread, so
the first job on one waits less (or not at all).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING

from tunewright.clients.cli.datadir import open_data
from tunewright.clients.cli.serve import silence_progress_bars

if TYPE_CHECKING:
    import argparse
    from types import FrameType

    from tunewright.storage.settings import Settings


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `worker` command."""
    parser = subcommands.add_parser(
        "worker",
        help="run a training worker: claim fine-tuning jobs and train them, and write exports",
        description="Claim fine-tuning jobs and model exports from the queue and run them, one at a time, until "
        "stopped.",
    )
    parser.add_argument(
        "--torch-threads",
        dest="torch_threads",
        type=int,
        default=None,
        help="torch CPU threads (default: $TUNEWRIGHT_TORCH_THREADS)",
    )
    parser.add_argument("--max-jobs", type=int, default=None, help="exit after running this many jobs and exports")
    parser.add_argument("--exit-when-idle", action="store_true", help="exit when no job or export is waiting")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the worker loop until stopped; return the exit status."""
    # Nothing may reach a model hub: every base model is a local directory or an installed package.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    silence_progress_bars()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tunewright.modeling.registry import import_packaged_models_in_background
    from tunewright.trainer.worker import build_worker

    with open_data(settings) as data:
        worker = build_worker(settings, data.stores)  # sets the torch threads the import uses too
        if not args.exit_when_idle:  # a batch run would exit before the import ends; its job imports what it needs
            import_packaged_models_in_background(settings)  # a job needing a model meanwhile waits, saying so

        def stop(signum: int, _frame: FrameType | None) -> None:
            if worker.stopping:  # a second signal: stop now; the lease expires and another worker resumes
                raise KeyboardInterrupt
            logging.getLogger(__name__).info("signal %d: finishing the current step, then stopping", signum)
            worker.request_stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        worker.run(max_jobs=args.max_jobs, exit_when_idle=args.exit_when_idle)
    return 0

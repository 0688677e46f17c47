"""`tunewright inference`: an inference node that the API's remote engine sends generation requests to.

The node is one granian process holding one `LocalEngine` (one copy of each base model, tenants' adapters
fetched from the same blob store as the API, or from a directory it shares with the API). The API reaches it when
`TUNEWRIGHT_INFERENCE_ENGINE=remote` and `TUNEWRIGHT_INFERENCE_URLS` lists it; both sides share
`TUNEWRIGHT_INFERENCE_TOKEN`. It speaks OpenAI's protocol as vLLM does (`tunewright.api.node.routes`). Without a
token the node only starts on a loopback address.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any

from tunewright.clients.cli.serve import (
    base_url,
    export_worker_env,
    granian_log_level,
    run_granian,
    silence_progress_bars,
)
from tunewright.storage.disk import make_private_dir
from tunewright.storage.settings import SettingsError

if TYPE_CHECKING:
    import argparse

    from tunewright.storage.settings import Settings

NODE_TARGET = "tunewright.api.node.routes:create_node_from_env"
"""The node's ASGI factory, loaded by granian in its worker process."""


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `inference` command."""
    parser = subcommands.add_parser(
        "inference",
        help="run an inference node for the API's remote engine",
        description=(
            "Serve base models and tenants' adapters to the API (TUNEWRIGHT_INFERENCE_ENGINE=remote) "
            "on one process; requests must carry TUNEWRIGHT_INFERENCE_TOKEN."
        ),
    )
    parser.add_argument("--host", default=None, help="address to listen on (default: $TUNEWRIGHT_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: $TUNEWRIGHT_PORT)")
    parser.set_defaults(handler=run)


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(settings: Settings) -> None:
    """Refuse an open node on a non-loopback address.

    Raises:
        SettingsError: no `TUNEWRIGHT_INFERENCE_TOKEN` while listening beyond loopback.
    """
    if settings.inference_token is None and not is_loopback(settings.host):
        raise SettingsError(
            f"TUNEWRIGHT_INFERENCE_TOKEN: required when the inference node listens on {settings.host} "
            "(without a token it only listens on loopback)"
        )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the node until SIGINT/SIGTERM; return the exit status."""
    check_token(settings)
    log_level = granian_log_level(settings.log_level)
    make_private_dir(settings.data_path)
    # Nothing may reach a model hub: every base model is a local directory or an installed package.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    silence_progress_bars()
    export_worker_env(args.config, args.settings_overrides)
    return serve_node(settings, log_level=log_level)


def serve_node(settings: Settings, *, log_level: Any) -> int:
    """Run granian with the node's app factory (one worker) until stopped; return the exit status."""
    banner = f"Tunewright inference node listening on {base_url(settings)}; Ctrl-C to stop"
    return run_granian(settings, NODE_TARGET, workers=1, log_level=log_level, banner=banner, command="inference")

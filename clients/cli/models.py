"""`tunewright models make-tiny`: build the tiny offline Llama-architecture model used by tests and demos."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from tunewright.storage.settings import Settings


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `models` command group."""
    parser = subcommands.add_parser("models", help="base model tools", description="Base model tools.")
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    tiny = actions.add_parser(
        "make-tiny",
        help="build the tiny offline model (tokenizer, chat template, random weights) into DIR",
        description="Build the tiny Llama-architecture model that tests and the offline demo train on.",
    )
    tiny.add_argument("directory", metavar="DIR", type=Path, help="folder to write the model into")
    tiny.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    tiny.set_defaults(handler=make_tiny)


def make_tiny(args: argparse.Namespace, settings: Settings) -> int:
    """Build the tiny model into `args.directory` and print where it is."""
    from tunewright.modeling.tiny import make_tiny as build  # lazy: imports torch

    path = build(args.directory, seed=args.seed)
    print(f"tiny model written to {path}")
    print(f"to train on it, add tiny={Path(path).resolve()} to TUNEWRIGHT_BASE_MODELS")
    return 0

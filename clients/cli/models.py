"""`tunewright models list|delete` (a server's Models API) and `models make-tiny` (offline: the tiny model)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tunewright.clients.cli.remote import add_command, show_deleted, show_page, when

if TYPE_CHECKING:
    import argparse

    import openai

    from tunewright.storage.settings import Settings


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `models` command group."""
    parser = subcommands.add_parser(
        "models",
        help="list and delete a server's models; build the tiny offline model",
        description="List and delete the models a project can call on a server; build the tiny offline model.",
    )
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    add_command(actions, "models list", run_list, help="list the models the project can call")
    delete = add_command(actions, "models delete", run_delete, help="delete a fine-tuned or checkpoint model")
    delete.add_argument("model", metavar="MODEL", help="the model's id (ft:…)")
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


def run_list(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`models list`: base models, then the project's fine-tuned and checkpoint models and those shared with it."""
    show_page(
        client.models.list(),
        args,
        ["ID", "OWNED BY", "CREATED"],
        lambda model: [model.id, model.owned_by, when(model.created)],
        empty="no models",
        command="models list",
    )


def run_delete(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`models delete MODEL`."""
    show_deleted(client.models.delete(args.model), args)

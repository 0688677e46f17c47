"""`tunewright projects list|create|get|update|archive`: an organization's projects, over the admin API.

They go through the SDK's `client.admin.organization.projects` with an admin key (`--admin-key`, else
`$OPENAI_ADMIN_KEY`): an organization's `sk-admin-…` key, or the operator key, which sees every organization's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.clients.cli.remote import (
    add_command,
    given,
    page_options,
    show,
    show_page,
    when,
)

if TYPE_CHECKING:
    import argparse

    import openai

PROJECT_FIELDS = ("id", "name", "status", "organization_id", "max_running_jobs", "created_at", "archived_at")
DEPLOYMENT_DEFAULT = "default"


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `projects` command group."""
    parser = subcommands.add_parser(
        "projects",
        help="list, create, rename and archive projects (admin API, OPENAI_ADMIN_KEY)",
        description="Manage an organization's projects over the admin API, with an admin key.",
    )
    actions = parser.add_subparsers(dest="projects_command", metavar="ACTION", required=True)

    listing = add_command(actions, "projects list", run_list, help="list the projects", admin=True)
    listing.add_argument("--include-archived", action="store_true", help="archived projects too")
    page_options(listing, limit_help="at most this many (default: 20)")

    create = add_command(actions, "projects create", run_create, help="create a project", admin=True)
    create.add_argument("name", metavar="NAME", help="the project's name")
    add_cap_argument(create)

    get = add_command(actions, "projects get", run_get, help="print a project", admin=True)
    get.add_argument("project_id", metavar="PROJECT_ID", help="the project's id (proj_…)")

    update = add_command(actions, "projects update", run_update, help="rename a project or change its cap", admin=True)
    update.add_argument("project_id", metavar="PROJECT_ID", help="the project's id (proj_…)")
    update.add_argument("--name", help="its new name")
    add_cap_argument(update)

    archive = add_command(actions, "projects archive", run_archive, help="archive a project", admin=True)
    archive.add_argument("project_id", metavar="PROJECT_ID", help="the project's id (proj_…)")


def add_cap_argument(parser: argparse.ArgumentParser) -> None:
    """`--max-running-jobs N|default`: the project's concurrent-jobs cap (a Tunewright extension)."""
    parser.add_argument(
        "--max-running-jobs",
        metavar="N",
        type=cap,
        help=f"how many of its jobs may train at once; `{DEPLOYMENT_DEFAULT}` for the deployment's setting",
    )


def cap(value: str) -> int | str:
    """A positive count, or `default`."""
    if value == DEPLOYMENT_DEFAULT:
        return value
    return int(value)


def cap_body(value: int | str | None) -> dict[str, Any]:
    """The `extra_body` carrying `max_running_jobs`, if given (`default` sends null)."""
    if value is None:
        return {}
    return {"extra_body": {"max_running_jobs": None if value == DEPLOYMENT_DEFAULT else value}}


def run_list(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`projects list`."""
    page = client.admin.organization.projects.list(
        **given(limit=args.limit, after=args.after, include_archived=args.include_archived or None)
    )
    show_page(
        page,
        args,
        ["ID", "NAME", "STATUS", "ORGANIZATION", "MAX RUNNING JOBS", "CREATED"],
        lambda project: [
            project.id,
            project.name,
            project.status,
            getattr(project, "organization_id", None),
            getattr(project, "max_running_jobs", None),
            when(project.created_at),
        ],
        empty="no projects",
        command="projects list",
    )


def run_create(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`projects create NAME`."""
    created = client.admin.organization.projects.create(name=args.name, **cap_body(args.max_running_jobs))
    show(created, args, PROJECT_FIELDS)


def run_get(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`projects get PROJECT_ID`."""
    show(client.admin.organization.projects.retrieve(args.project_id), args, PROJECT_FIELDS)


def run_update(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`projects update PROJECT_ID [--name N] [--max-running-jobs N]`."""
    projects = client.admin.organization.projects
    updated = projects.update(args.project_id, **given(name=args.name), **cap_body(args.max_running_jobs))
    show(updated, args, PROJECT_FIELDS)


def run_archive(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`projects archive PROJECT_ID`."""
    show(client.admin.organization.projects.archive(args.project_id), args, PROJECT_FIELDS)

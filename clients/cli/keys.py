"""`tunewright keys`: API keys, on the data dir (the operator's) or over the admin API (an organization's).

`keys create|list|revoke` work straight on the metadata store, for any organization, with no server running: a
secret is printed once, as the last line of `keys create`, and stored only as `hash_secret(secret)` with a
redacted form for display; what they change is in the audit log as the operator's doing. Given `--project-id`,
`keys list|get|delete` go over the admin API instead (`client.admin.organization.projects.api_keys`, with
`--admin-key` or `$OPENAI_ADMIN_KEY`), as OpenAI's API has them: per project, and with no way to create a key.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

from tunewright.clients.cli.datadir import open_data
from tunewright.clients.cli.remote import (
    ClientCommand,
    add_base_url_argument,
    add_command,
    add_key_argument,
    given,
    page_options,
    print_json,
    print_table,
    show,
    show_deleted,
    show_page,
    when,
)
from tunewright.storage.api_keys import mint_api_key
from tunewright.storage.audit import OPERATOR_ACTOR
from tunewright.storage.errors import Conflict, NotFound

if TYPE_CHECKING:
    import argparse

    import openai

    from tunewright.storage.base import MetadataStore
    from tunewright.storage.records import ApiKeyRecord, OrganizationRecord, ProjectRecord
    from tunewright.storage.settings import Settings

DEFAULT_KEY_NAME = "cli"
CREATE_FLAGS = "--org ORG --project PROJECT"
_UNSAFE_SLUG_CHARS = re.compile(r"[^a-z0-9_-]+")


class KeyCreated:
    """A key just issued: its stored row, its one-time secret, and where it belongs."""

    def __init__(
        self,
        record: ApiKeyRecord,
        secret: str,
        organization: OrganizationRecord,
        project: ProjectRecord | None,
    ) -> None:
        """Hold what `issue_key` produced."""
        self.record = record
        self.secret = secret
        self.organization = organization
        self.project = project


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `keys` command group."""
    parser = subcommands.add_parser(
        "keys",
        help="create, list and revoke API keys on the data dir; a project's keys over the admin API",
        description="Create, list and revoke API keys straight on the data dir (no server needed), or list, read "
        "and revoke a project's keys over the admin API (--project-id, with an admin key).",
    )
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        help="create a key (and its organization and project if missing); prints the secret last",
        description="Create an API key. The organization and project are created if missing. "
        "The secret is printed once, as the last line of output, and stored only as a hash.",
    )
    create.add_argument("--org", required=True, help="organization name (its slug: lower case, safe chars)")
    create.add_argument("--project", help="project name (required unless --admin)")
    create.add_argument("--name", default=DEFAULT_KEY_NAME, help=f"key name (default: {DEFAULT_KEY_NAME})")
    create.add_argument(
        "--admin", action="store_true", help="make an organization admin key (for /v1/organization routes)"
    )
    create.set_defaults(handler=run_create)

    listing = actions.add_parser(
        "list",
        help="list unrevoked keys (never their secrets): every key on the data dir, or one project's (admin API)",
        description="List unrevoked keys, never their secrets: every organization's, straight from the data dir; "
        "or, with --project-id, that project's over the admin API (with an admin key).",
    )
    listing.add_argument("--project-id", metavar="PROJECT_ID", help="list this project's keys over the admin API")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    page_options(listing, limit_help="with --project-id: at most this many (default: 20)")
    add_base_url_argument(listing)
    add_key_argument(listing, admin=True)
    listing.set_defaults(handler=run_list, remote_list=ClientCommand("keys list", run_remote_list))

    revoke = actions.add_parser("revoke", help="revoke a key at once (on the data dir)")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_…), as `keys list` shows it")
    revoke.set_defaults(handler=run_revoke)

    get = add_command(actions, "keys get", run_get, help="print a project's key (admin API)", admin=True)
    get.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_…)")
    get.add_argument("--project-id", metavar="PROJECT_ID", required=True, help="the key's project (proj_…)")

    delete = add_command(actions, "keys delete", run_delete, help="revoke a project's key (admin API)", admin=True)
    delete.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_…)")
    delete.add_argument("--project-id", metavar="PROJECT_ID", required=True, help="the key's project (proj_…)")


def slugify(name: str) -> str:
    """Return the organization slug for `name`: lower case; runs of other characters become `-`.

    Raises:
        ValueError: nothing usable is left.
    """
    slug = _UNSAFE_SLUG_CHARS.sub("-", name.strip().lower()).strip("-")
    if not slug:
        raise ValueError(f"organization name {name!r} has no letters or digits to make a slug from")
    return slug


def ensure_organization(metadata: MetadataStore, name: str) -> OrganizationRecord:
    """Return the organization whose slug is `slugify(name)`, creating it if missing."""
    slug = slugify(name)
    found = metadata.find_organization(slug=slug)
    if found is not None:
        return found
    try:
        return metadata.create_organization(name=name, slug=slug)
    except Conflict:
        # Another process created it between our look-up and insert.
        found = metadata.find_organization(slug=slug)
        if found is None:
            raise
        return found


def ensure_project(metadata: MetadataStore, organization: OrganizationRecord, name: str) -> ProjectRecord:
    """Return the organization's project called `name`, creating it if missing (one, however many processes ask)."""
    return metadata.ensure_project(organization_id=organization.id, name=name, actor=OPERATOR_ACTOR)


def issue_key(
    metadata: MetadataStore,
    organization: OrganizationRecord,
    project: ProjectRecord | None,
    *,
    name: str,
) -> KeyCreated:
    """Create a project key (or, with `project=None`, an organization admin key) and return its secret."""
    record, secret = mint_api_key(
        organization_id=organization.id,
        project_id=None if project is None else project.id,
        name=name,
        kind="admin" if project is None else "project",
    )
    return KeyCreated(metadata.create_api_key(record, actor=OPERATOR_ACTOR), secret, organization, project)


def _usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the `keys create` flags, if anything (checked before anything is stored)."""
    if args.admin and args.project:
        return "--admin makes an organization key: leave out --project"
    if not args.admin and not (args.project or "").strip():
        return "--project is required (or --admin for an admin key)"
    if not args.name.strip():
        return "--name must not be blank"
    try:
        slugify(args.org)
    except ValueError as exc:
        return str(exc)
    return None


def run_create(args: argparse.Namespace, settings: Settings) -> int:
    """`keys create`: print what was made, then the secret as the last line."""
    problem = _usage_error(args)
    if problem is not None:
        print(f"tunewright: keys create: {problem}", file=sys.stderr)
        return 2
    with open_data(settings) as data:
        metadata = data.stores.metadata
        organization = ensure_organization(metadata, args.org)
        project = None if args.admin else ensure_project(metadata, organization, args.project.strip())
        if project is not None and project.status != "active":
            # Its keys would be refused on every request; say so instead of printing a dead key.
            print(f"tunewright: keys create: project {project.name!r} is archived", file=sys.stderr)
            return 1
        created = issue_key(metadata, organization, project, name=args.name)
    where = f"organization {organization.slug!r} ({organization.id})"
    if created.project is not None:
        where += f", project {created.project.name!r} ({created.project.id})"
    print(f"Created {created.record.kind} key {created.record.id} for {where}.")
    print("The secret key is shown once; store it now:")
    print(created.secret)
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    """`keys list`: one row per unrevoked key; secrets never appear (only their redacted form).

    With `--project-id`, the project's keys over the admin API instead.
    """
    if args.project_id is not None:
        return args.remote_list(args, settings)
    with open_data(settings) as data:
        metadata = data.stores.metadata
        organizations: dict[str, str] = {}
        projects: dict[str, str] = {}
        listed = []
        for key in metadata.list_all_api_keys():
            if key.organization_id not in organizations:
                organizations[key.organization_id] = metadata.get_organization(key.organization_id).slug
            if key.project_id is not None and key.project_id not in projects:
                projects[key.project_id] = metadata.get_project(key.project_id, organization_id=None).name
            listed.append(
                {
                    "id": key.id,
                    "kind": key.kind,
                    "organization": organizations[key.organization_id],
                    "project": None if key.project_id is None else projects[key.project_id],
                    "name": key.name,
                    "redacted_value": key.redacted_value,
                    "created_at": key.created_at,
                    "last_used_at": key.last_used_at,
                }
            )
    if args.json:
        print_json(listed)
        return 0
    rows = [[*list(key.values())[:6], when(key["created_at"]), when(key["last_used_at"])] for key in listed]
    headers = ["ID", "KIND", "ORG", "PROJECT", "NAME", "KEY", "CREATED", "LAST USED"]
    print_table(headers, rows, empty=f"no API keys (create one with `tunewright keys create {CREATE_FLAGS}`)")
    return 0


def run_remote_list(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`keys list --project-id PROJECT_ID`: the project's keys over the admin API."""
    page = client.admin.organization.projects.api_keys.list(
        args.project_id, **given(limit=args.limit, after=args.after)
    )
    show_page(
        page,
        args,
        ["ID", "NAME", "KEY", "OWNER", "CREATED", "LAST USED"],
        lambda key: [key.id, key.name, key.redacted_value, _owner(key), when(key.created_at), when(key.last_used_at)],
        empty="no API keys",
        command=f"keys list --project-id {args.project_id}",
    )


def _owner(key: object) -> str:
    owner = getattr(key, "owner", None)
    if owner is None or owner.type is None:
        return "-"
    named = getattr(owner, owner.type, None)
    return f"{owner.type} {getattr(named, 'name', None) or getattr(named, 'id', '')}".strip()


def run_get(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`keys get KEY_ID --project-id PROJECT_ID`."""
    key = client.admin.organization.projects.api_keys.retrieve(args.key_id, project_id=args.project_id)
    show(key, args, ("id", "name", "redacted_value", "created_at", "last_used_at"))


def run_delete(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`keys delete KEY_ID --project-id PROJECT_ID`: the key stops working at once."""
    show_deleted(client.admin.organization.projects.api_keys.delete(args.key_id, project_id=args.project_id), args)


def run_revoke(args: argparse.Namespace, settings: Settings) -> int:
    """`keys revoke KEY_ID`: the key stops working at once; an unknown id exits 1."""
    with open_data(settings) as data:
        metadata = data.stores.metadata
        key = next((k for k in metadata.list_all_api_keys() if k.id == args.key_id), None)
        if key is None:
            print(f"tunewright: keys revoke: no active key {args.key_id!r}", file=sys.stderr)
            return 1
        try:
            metadata.revoke_api_key(
                key.id, organization_id=key.organization_id, project_id=key.project_id, actor=OPERATOR_ACTOR
            )
        except NotFound:
            print(f"tunewright: keys revoke: no active key {args.key_id!r}", file=sys.stderr)
            return 1
    print(f"revoked {key.id} ({key.redacted_value})")
    return 0

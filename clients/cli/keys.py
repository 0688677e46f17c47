"""`tunewright keys create|list|revoke`: API keys of any organization, straight on the metadata store.

A secret is printed once, as the last line of `keys create`, and stored only as `hash_secret(secret)` with a
redacted form for display. What these commands change is in the audit log as the operator's doing.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tunewright.clients.cli.datadir import open_data
from tunewright.storage.api_keys import mint_api_key
from tunewright.storage.audit import OPERATOR_ACTOR
from tunewright.storage.errors import Conflict, NotFound

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from tunewright.storage.base import MetadataStore
    from tunewright.storage.records import ApiKeyRecord, OrganizationRecord, ProjectRecord
    from tunewright.storage.settings import Settings

DEFAULT_KEY_NAME = "cli"
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
    parser = subcommands.add_parser("keys", help="manage API keys", description="Manage API keys.")
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

    listing = actions.add_parser("list", help="list unrevoked keys (never their secrets)")
    listing.set_defaults(handler=run_list)

    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_…), as `keys list` shows it")
    revoke.set_defaults(handler=run_revoke)


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


def _when(timestamp: int | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return rows as left-aligned columns under their headers."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]
    return "\n".join(lines)


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    """`keys list`: one row per unrevoked key; secrets never appear (only their redacted form)."""
    with open_data(settings) as data:
        metadata = data.stores.metadata
        records = metadata.list_all_api_keys()
        organizations: dict[str, str] = {}
        projects: dict[str, str] = {}
        rows = []
        for key in records:
            if key.organization_id not in organizations:
                organizations[key.organization_id] = metadata.get_organization(key.organization_id).slug
            if key.project_id is not None and key.project_id not in projects:
                projects[key.project_id] = metadata.get_project(key.project_id, organization_id=None).name
            rows.append(
                [
                    key.id,
                    key.kind,
                    organizations[key.organization_id],
                    "-" if key.project_id is None else projects[key.project_id],
                    key.name,
                    key.redacted_value,
                    _when(key.created_at),
                    _when(key.last_used_at),
                ]
            )
    if not rows:
        print("no API keys (create one with `tunewright keys create --org ORG --project PROJECT`)")
        return 0
    headers = ["ID", "KIND", "ORG", "PROJECT", "NAME", "KEY", "CREATED", "LAST USED"]
    print(format_table(headers, rows))
    return 0


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

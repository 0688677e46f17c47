"""`tunewright files upload|list|get|delete|download`: a server's Files API, through the `openai` SDK.

`upload` sends a file in one request (`POST /v1/files`) up to `--single-request-limit` bytes (OpenAI's 512 MB by
default) and through the Uploads API above it (`POST /v1/uploads`, parts of `--part-size`, then `complete` with the
parts' MD5), showing a progress bar on a terminal. A `fine-tune` file is checked by the server as it arrives: a
bad line is refused with its number.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import mimetypes
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewright.clients.cli.remote import (
    CommandError,
    add_command,
    given,
    page_options,
    progress,
    show,
    show_deleted,
    show_page,
    when,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    import openai
    from openai.types import FileObject

MIB = 1024 * 1024
SINGLE_REQUEST_LIMIT = 512 * MIB
"""OpenAI's limit on `POST /v1/files`, and Tunewright's default `TUNEWRIGHT_MAX_FILE_BYTES`."""
PART_SIZE = 64 * MIB
"""OpenAI's largest upload part, and Tunewright's default `TUNEWRIGHT_MAX_PART_BYTES`."""
FILE_FIELDS = ("id", "filename", "purpose", "bytes", "status", "created_at", "expires_at")


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `files` command group."""
    parser = subcommands.add_parser(
        "files",
        help="upload, list, read, download and delete files on a server",
        description="Upload, list, read, download and delete the files of a project on a server.",
    )
    actions = parser.add_subparsers(dest="files_command", metavar="ACTION", required=True)

    upload = add_command(
        actions,
        "files upload",
        run_upload,
        help="upload a file (the Uploads API above the single-request limit); prints the file",
    )
    upload.add_argument("path", metavar="PATH", type=Path, help="the file to upload")
    upload.add_argument("--purpose", default="fine-tune", help="the file's purpose (default: fine-tune)")
    upload.add_argument(
        "--single-request-limit",
        type=int,
        default=SINGLE_REQUEST_LIMIT,
        metavar="BYTES",
        help=f"above this size, upload in parts through the Uploads API (default: {SINGLE_REQUEST_LIMIT})",
    )
    upload.add_argument(
        "--part-size", type=int, default=PART_SIZE, metavar="BYTES", help=f"bytes per part (default: {PART_SIZE})"
    )

    listing = add_command(actions, "files list", run_list, help="list the project's files, newest first")
    listing.add_argument("--purpose", default=None, help="only files with this purpose")
    page_options(listing, limit_help="at most this many (default: the server's, 10000)")

    get = add_command(actions, "files get", run_get, help="print a file's details")
    get.add_argument("file_id", metavar="FILE_ID", help="the file's id (file-…)")

    delete = add_command(actions, "files delete", run_delete, help="delete a file")
    delete.add_argument("file_id", metavar="FILE_ID", help="the file's id (file-…)")

    download = add_command(
        actions, "files download", run_download, help="write a file's content to PATH or stdout", json_output=False
    )
    download.add_argument("file_id", metavar="FILE_ID", help="the file's id (file-…)")
    download.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        default=None,
        help="where to write it (default: its filename, here; - for stdout)",
    )


def run_upload(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`files upload PATH`: upload, then print the file."""
    if args.part_size < 1 or args.single_request_limit < 0:
        raise CommandError("--part-size must be positive and --single-request-limit not negative")
    uploaded = upload_file(
        client,
        args.path,
        purpose=args.purpose,
        single_request_limit=args.single_request_limit,
        part_size=args.part_size,
    )
    show(uploaded, args, FILE_FIELDS)


def upload_file(
    client: openai.OpenAI,
    path: Path,
    *,
    purpose: str,
    single_request_limit: int,
    part_size: int,
    filename: str | None = None,
) -> FileObject:
    """Upload `path` as `filename` (default: its name): one request up to `single_request_limit` bytes, else parts.

    Raises:
        CommandError: the file cannot be read.
    """
    name = filename or path.name
    try:
        size = path.stat().st_size
        handle = path.open("rb")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle, progress(size, f"uploading {name}", enabled=sys.stderr.isatty()) as update:
        if size <= single_request_limit:
            reader = ProgressReader(handle, update)
            return client.files.create(file=(name, reader), purpose=purpose)  # type: ignore[arg-type]
        return upload_in_parts(client, handle, name, size, purpose=purpose, part_size=part_size, update=update)


def upload_in_parts(
    client: openai.OpenAI,
    handle: io.BufferedReader,
    filename: str,
    size: int,
    *,
    purpose: str,
    part_size: int,
    update: Callable[[int], None],
) -> FileObject:
    """Create an upload, add `handle`'s bytes as parts, complete it with their MD5; cancel it on any failure."""
    import openai

    mime_type = "application/jsonl" if filename.endswith(".jsonl") else mimetypes.guess_type(filename)[0]
    upload = client.uploads.create(
        bytes=size,
        filename=filename,
        mime_type=mime_type or "application/octet-stream",
        purpose=purpose,  # type: ignore[arg-type]
    )
    try:
        digest = hashlib.md5(usedforsecurity=False)
        part_ids = []
        while chunk := handle.read(part_size):
            digest.update(chunk)
            part_ids.append(client.uploads.parts.create(upload.id, data=chunk).id)
            update(handle.tell())
        completed = client.uploads.complete(upload.id, part_ids=part_ids, md5=digest.hexdigest())
    except BaseException:
        with contextlib.suppress(openai.OpenAIError):
            client.uploads.cancel(upload.id)
        raise
    if completed.file is None:
        raise CommandError(f"upload {upload.id} completed without a file")
    return completed.file


class ProgressReader(io.BufferedReader):
    """A binary file whose reads report how far they got (after a seek back too, as on a retried request)."""

    def __init__(self, handle: io.BufferedReader, update: Callable[[int], None]) -> None:
        """Read `handle`'s raw file; call `update(position)` after each read."""
        super().__init__(handle.raw)
        self.update = update

    def read(self, size: int | None = -1, /) -> bytes:
        """Read, then report the position."""
        chunk = super().read(size)
        self.update(self.tell())
        return chunk


def run_list(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`files list`: one page of files as a table (or JSON)."""
    page = client.files.list(**given(purpose=args.purpose, limit=args.limit, after=args.after))
    show_page(
        page,
        args,
        ["ID", "FILENAME", "PURPOSE", "BYTES", "STATUS", "CREATED"],
        lambda f: [f.id, f.filename, f.purpose, f.bytes, f.status, when(f.created_at)],
        empty="no files",
        command="files list",
    )


def run_get(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`files get FILE_ID`."""
    show(client.files.retrieve(args.file_id), args, FILE_FIELDS)


def run_delete(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`files delete FILE_ID`."""
    show_deleted(client.files.delete(args.file_id), args)


def run_download(client: openai.OpenAI, args: argparse.Namespace) -> None:
    """`files download FILE_ID [-o PATH]`: stream the content to a file (its own name by default) or stdout."""
    save_content(client, args.file_id, args.output)


def save_content(client: openai.OpenAI, file_id: str, output: str | None) -> None:
    """Stream a file's content to `output` (default: its own name, here; `-`: stdout), with a progress bar."""
    if output is None:
        output = Path(client.files.retrieve(file_id).filename).name
    with client.files.with_streaming_response.content(file_id) as response:
        total = int(response.headers.get("content-length") or 0)
        if output == "-":
            for chunk in response.iter_bytes():
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        written = write_stream(response.iter_bytes(), Path(output), total)
    print(f"wrote {written} bytes to {output}", file=sys.stderr)


def write_stream(chunks: Any, path: Path, total: int) -> int:
    """Write `chunks` to `path` (through a temporary file beside it, renamed at the end); return the bytes."""
    partial = path.with_name(f".{path.name}.part")
    written = 0
    try:
        with partial.open("wb") as out, progress(total, f"downloading {path.name}", enabled=sys.stderr.isatty()) as up:
            for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
                up(written)
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written

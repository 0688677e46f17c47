"""The files of `tunewright import`: read at the source, matched with copies already here, copied once.

A source file is described once (`GET /files/{id}` at the source; a 404 marks it missing). A copy already on
this server is a file here with the same filename, size and purpose whose bytes hash the same as the source's
(SHA-256 of both contents; the source's is downloaded only when such a candidate exists). Otherwise the source's
bytes are streamed to a temporary file, checked against the size the source declared, and uploaded here with
the same filename and purpose (`files upload`'s path: one request, or the Uploads API above 512 MiB). A file is
copied at most once per run, and a copy made by an earlier run is found again by its content, so re-running an
import copies nothing twice.

OpenAI does not let anyone download a file of purpose `fine-tune` (400 "Not allowed to download files of
purpose: fine-tune"). For such a source the bytes come from `--files-from DIR`: the file there with the source
file's name (its last path part only) and exactly its size.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, BinaryIO

from tunewright.clients.cli.files import PART_SIZE, SINGLE_REQUEST_LIMIT, upload_file
from tunewright.clients.cli.remote import describe

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import openai

CHUNK = 1024 * 1024
REFUSALS = (400, 403)
"""How a source refuses to send a file's content: OpenAI answers 400 "Not allowed to download files of purpose:
fine-tune"."""


class SourceError(Exception):
    """The source refused a request or could not be reached; the message says which and why."""


class FileGoneError(Exception):
    """A file a job needs no longer exists at the source (404)."""


class DownloadRefusedError(Exception):
    """The source will not send a file's content (OpenAI answers 400 for files of purpose `fine-tune`)."""


@dataclass(slots=True)
class SourceFile:
    """A file of the source, and its copy here once known."""

    id: str
    filename: str = ""
    bytes: int = 0
    purpose: str = ""
    missing: bool = False
    here: str | None = None  # the id of its copy on this server
    copied: bool = False  # copied by this run (not found here already)
    temporary: bool = False  # uploaded for a dry run's estimate, deleted after it

    def to_json(self) -> dict[str, Any]:
        """What `--json` prints of it."""
        return {
            "id": self.id,
            "filename": self.filename or None,
            "bytes": self.bytes if not self.missing else None,
            "purpose": self.purpose or None,
            "missing": self.missing,
            "copied_as": None if self.temporary else self.here,
            "copied": self.copied,
        }


@contextlib.contextmanager
def at_source(base_url: str) -> Iterator[None]:
    """Turn what the SDK raises on a source request into `SourceError` (a 404 into `FileGoneError`)."""
    import httpx
    import openai

    try:
        yield
    except openai.NotFoundError as exc:
        raise FileGoneError(describe(exc, base_url)) from None
    except openai.OpenAIError as exc:
        raise SourceError(f"the source: {describe(exc, base_url)}") from None
    except httpx.TransportError as exc:  # the connection dropped while the content streamed
        raise SourceError(f"the source: {base_url} dropped the connection: {exc}") from None


class FileCopier:
    """Describes source files, finds their copies here, and copies the others (each once)."""

    def __init__(
        self,
        source: openai.OpenAI,
        here: openai.OpenAI,
        *,
        source_url: str,
        workdir: Path,
        local_dir: Path | None = None,
    ) -> None:
        """Copy from `source` (at `source_url`) to `here`, staging downloads in `workdir`.

        `local_dir` holds copies of the source's files (by filename) for a source that refuses to send them.
        """
        self.local_dir = local_dir
        self.source = source
        self.here_client = here
        self.source_url = source_url
        self.workdir = workdir
        self.files: dict[str, SourceFile] = {}
        self._index: dict[tuple[str, int, str], list[str]] | None = None
        self._here_digests: dict[str, str] = {}
        self._source_digests: dict[str, str] = {}
        self._paths: dict[str, Path] = {}

    def describe(self, file_id: str) -> SourceFile:
        """The source file's filename, size and purpose (`missing` after a 404 at the source)."""
        known = self.files.get(file_id)
        if known is not None:
            return known
        record = SourceFile(id=file_id)
        try:
            with at_source(self.source_url):
                found = self.source.files.retrieve(file_id)
            record.filename, record.bytes, record.purpose = found.filename, found.bytes, found.purpose
        except FileGoneError:
            record.missing = True
        self.files[file_id] = record
        return record

    def find_here(self, record: SourceFile) -> str | None:
        """The id of a file here with the source file's name, size, purpose and bytes, if there is one."""
        if record.here is not None:
            return record.here
        candidates = self._candidates().get((record.filename, record.bytes, record.purpose), [])
        if not candidates:
            return None
        digest = self._source_digest(record)
        for file_id in candidates:
            if self._here_digest(file_id) == digest:
                record.here = file_id
                return file_id
        return None

    def copy(self, record: SourceFile, *, temporary: bool = False) -> str:
        """The id of the file's copy here, uploading it unless it is here already.

        Raises:
            FileGoneError: the file disappeared from the source meanwhile.
            SourceError: the source could not be read.
            openai.APIStatusError: this server refused the upload.
        """
        found = self.find_here(record)
        if found is not None:
            return found
        path = self._staged(record)
        try:
            uploaded = upload_file(
                self.here_client,
                path,
                purpose=record.purpose,
                single_request_limit=SINGLE_REQUEST_LIMIT,
                part_size=PART_SIZE,
                filename=record.filename,
            )
        finally:
            path.unlink(missing_ok=True)
            self._paths.pop(record.id, None)
        if uploaded.bytes != record.bytes:
            raise SourceError(f"{record.id}: this server stored {uploaded.bytes} bytes of {record.bytes}")
        record.here, record.copied, record.temporary = uploaded.id, True, temporary
        if not temporary:
            self._candidates().setdefault((record.filename, record.bytes, record.purpose), []).append(uploaded.id)
            self._here_digests[uploaded.id] = self._source_digests[record.id]
        return uploaded.id

    def delete_temporary(self) -> None:
        """Delete the files uploaded only for a dry run's estimates."""
        for record in self.files.values():
            if record.temporary and record.here is not None:
                self.here_client.files.delete(record.here)
                record.here, record.copied, record.temporary = None, False, False

    def _candidates(self) -> dict[tuple[str, int, str], list[str]]:
        """This server's files by (filename, bytes, purpose), read once (every page)."""
        if self._index is None:
            self._index = {}
            for found in self.here_client.files.list():
                self._index.setdefault((found.filename, found.bytes, found.purpose), []).append(found.id)
        return self._index

    def _here_digest(self, file_id: str) -> str:
        if file_id not in self._here_digests:
            digest = hashlib.sha256()
            with self.here_client.files.with_streaming_response.content(file_id) as response:
                for chunk in response.iter_bytes(CHUNK):
                    digest.update(chunk)
            self._here_digests[file_id] = digest.hexdigest()
        return self._here_digests[file_id]

    def _source_digest(self, record: SourceFile) -> str:
        if record.id not in self._source_digests:
            self._staged(record)
        return self._source_digests[record.id]

    def _staged(self, record: SourceFile) -> Path:
        """The source file's bytes in the work dir (downloaded once, or read from `local_dir`, until uploaded).

        Raises:
            FileGoneError: the source answers 404.
            SourceError: the source failed, refused the download with no local copy to fall back on, or sent
                another number of bytes than it declared.
        """
        if record.id not in self._paths:
            path = self.workdir / record.id
            try:
                with at_source(self.source_url), path.open("wb") as out:
                    self._source_digests[record.id] = self._fetch(record, out)
            except DownloadRefusedError as exc:
                self._source_digests[record.id] = self._read_local(record, path, refusal=str(exc))
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            self._paths[record.id] = path
        return self._paths[record.id]

    def _fetch(self, record: SourceFile, out: BinaryIO) -> str:
        """Stream the source file's content into `out`; return its SHA-256 (hex).

        Raises:
            DownloadRefusedError: the source refuses to send it (OpenAI keeps `fine-tune` files to itself).
            SourceError: it sent another number of bytes than it declared.
        """
        import openai

        digest = hashlib.sha256()
        size = 0
        try:
            with self.source.files.with_streaming_response.content(record.id) as response:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        except openai.APIStatusError as exc:
            if exc.status_code in REFUSALS:
                raise DownloadRefusedError(describe(exc, self.source_url)) from None
            raise
        if size != record.bytes:
            raise SourceError(f"the source sent {size} bytes of {record.id}, which it says has {record.bytes}")
        return digest.hexdigest()

    def _read_local(self, record: SourceFile, path: Path, *, refusal: str) -> str:
        """Stage `local_dir`'s file of the source file's name (its last path part) and size; return its SHA-256.

        Raises:
            SourceError: there is no such file there (or no `local_dir`), or its size differs.
        """
        name = PurePath(record.filename.replace("\\", "/")).name
        local = self.local_dir / name if self.local_dir is not None and name not in ("", ".", "..") else None
        if local is None or not local.is_file():
            where = f"no {name} in {self.local_dir}" if self.local_dir is not None else "pass --files-from DIR"
            raise SourceError(f"the source refuses to send {record.id} ({refusal}); {where}")
        if local.stat().st_size != record.bytes:
            size = local.stat().st_size
            raise SourceError(f"{local} has {size} bytes, but {record.id} ({name}) at the source has {record.bytes}")
        shutil.copyfile(local, path)
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

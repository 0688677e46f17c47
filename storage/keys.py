"""Blob key rules, shared by every BlobStore so that a key valid on one backend is valid on all."""

from __future__ import annotations

import re

from tunewright.storage.errors import InvalidKey

MAX_KEY_BYTES = 1024
"""S3's limit on a key's UTF-8 length; enforced everywhere so that local and S3 accept the same keys."""

TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{16}\Z")
"""How LocalBlobStore's in-flight temp files end; refused in keys so a sweep never takes an object."""


def validate_key(key: str) -> str:
    """Check that `key` is relative, `/`-separated, canonical and reserved-name free; return it.

    Raises:
        InvalidKey: the key is empty, absolute, too long, or has an empty, `.`, `..` or temp-file segment,
            a backslash or a NUL.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("blob key is empty")
    if "\\" in key or "\x00" in key:
        raise InvalidKey("blob key contains a backslash or NUL")
    if key.startswith("/"):
        raise InvalidKey("blob key is absolute")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey("blob key is not valid UTF-8") from exc
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidKey(f"blob key is longer than {MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey("blob key has an empty, '.' or '..' segment")
        if TEMP_NAME.search(segment):
            raise InvalidKey("blob key segment ends like a temp file name")
    return key


def validate_prefix(prefix: str) -> str:
    """Check that `prefix` is a folder: a valid key followed by `/`; return it.

    Raises:
        InvalidKey: the prefix does not end in `/` or the part before it is not a valid key.
    """
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        raise InvalidKey("blob prefix must be a folder ending in '/'")
    validate_key(prefix[:-1])
    return prefix


def file_blob_key(project_id: str, file_id: str) -> str:
    """Where a File's bytes live."""
    return f"{project_id}/files/{file_id}"


def adapter_blob_prefix(project_id: str, job_id: str, name: str) -> str:
    """Where a job's adapter `name` (`final`, `ckpt-step-N`) lives: a prefix holding the PEFT files."""
    return f"{project_id}/adapters/{job_id}/{name}"


def resume_blob_key(project_id: str, job_id: str) -> str:
    """Where a job's latest private resume point lives."""
    return f"{project_id}/jobs/{job_id}/resume.pt"

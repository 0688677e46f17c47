"""Errors raised by the storage layer; the API maps them to HTTP (404, 409, 503, 507)."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every storage error."""


class NotFound(StorageError):  # noqa: N818 - the name reads as the condition, as in the protocols' docs
    """The object does not exist in this project (or at all)."""


class UnstorableText(NotFound):
    """A text parameter holds a NUL character (U+0000).

    PostgreSQL cannot store or compare such text, and SQLite is held to the same rule, so no stored object
    has it: a lookup by it finds nothing (hence a `NotFound`). The API refuses NUL in the values it writes
    before they get here; one that gets here anyway is a 400, never a driver error.
    """


class Conflict(StorageError):  # noqa: N818
    """The write would break a uniqueness or state rule."""


class Unavailable(StorageError):  # noqa: N818
    """The backing service (database, object store) did not answer."""


class DatabaseUnavailable(Unavailable):
    """The metadata database did not answer (or cannot write: disk full, a lock held too long)."""


class InvalidKey(StorageError):  # noqa: N818
    """A blob key is malformed (empty, absolute, or contains `..`)."""


class InvalidCursor(StorageError):  # noqa: N818
    """A list's `after` names no object of that list; the API answers 400 `param: "after"`."""


class StateConflict(StorageError):  # noqa: N818
    """A compare-and-set on a job's status found another status; `current` holds it."""

    def __init__(self, current: str) -> None:
        """Remember the status that was found."""
        super().__init__(f"current status is {current}")
        self.current = current


class InsufficientStorage(StorageError):  # noqa: N818
    """The disk (or the database's) has no room for new data, or less than the configured watermark."""


class DatabaseFull(InsufficientStorage, DatabaseUnavailable):
    """The database cannot write because its disk is full.

    The API answers it as any full disk (507); a training worker waits it out as an outage, since a job's
    bookkeeping must not be lost to it.
    """


class LimitExceeded(StorageError):  # noqa: N818
    """A write would carry an object past the size it declared (an upload's parts beyond its `bytes`)."""

"""``AdapterCache``: LoRA adapters from the blob store to local disk to a base model's memory, LRU-bounded.

States (docs/architecture.md "Inference"): ``fetching`` (blob → a temp folder, renamed into place) →
``on_disk`` → ``loaded`` (in the base model's LoRA stacks) → ``evicted``. One lock per adapter name, so concurrent
first requests fetch and load it once. An adapter in use is pinned (``AdapterLease``) and never evicted under a
running row; the bounds (``adapter_cache_count`` loaded, ``adapter_cache_bytes`` on disk) are enforced on every
acquire and release, so they may be exceeded only while more adapters than that are in use at once.

A missing or corrupt adapter fails the requests for it with ``adapter_unavailable``: status 500 (the model
exists but its files cannot be served, and retrying will not help), or 503 when the blob store itself is
unreachable (retrying may). Every load uses a fresh internal PEFT name, so an adapter that is being evicted or
forgotten never collides with its own reload.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
import logging
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tunewright.inference.engine import EngineError
from tunewright.inference.lora_gather import UnsupportedAdapterError
from tunewright.storage.errors import NotFound, Unavailable

if TYPE_CHECKING:
    from tunewright.inference.engine import AdapterRef
    from tunewright.storage.base import BlobStore

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class AdapterState(enum.StrEnum):
    """Where an adapter is."""

    FETCHING = "fetching"
    ON_DISK = "on_disk"
    LOADED = "loaded"
    EVICTED = "evicted"


class AdapterHost(Protocol):
    """A base model adapters are loaded into (``inference.models.BaseModel``)."""

    def load_adapter(self, path: Path, name: str) -> None:
        """Load a PEFT adapter directory under ``name``."""
        ...

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter's weights."""
        ...


@dataclass(eq=False)
class _Entry:
    name: str
    host: AdapterHost
    lock: threading.Lock = field(default_factory=threading.Lock)
    state: AdapterState = AdapterState.FETCHING
    directory: Path | None = None
    size: int = 0
    peft_name: str | None = None
    pins: int = 0
    used: int = 0
    forgotten: bool = False


@dataclass(frozen=True)
class AdapterCacheStats:
    """What the cache has done since it was made (counters for /metrics).

    A hit is an acquire that found the adapter loaded; a miss one that had to load it (from disk, or fetched
    first); an eviction takes an idle adapter out of memory, or its files off disk, to keep the bounds.
    """

    hits: int = 0
    misses: int = 0
    evicted_from_memory: int = 0
    evicted_from_disk: int = 0


@dataclass(frozen=True, eq=False)
class AdapterLease:
    """A pinned, loaded adapter: ``peft_name`` is what rows pass as their adapter name until ``release``."""

    name: str
    peft_name: str
    entry: _Entry


def folder_name(name: str) -> str:
    """Return a safe, unique folder name for an adapter name (``ft:base:org:suffix:id`` has colons)."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{_UNSAFE.sub('_', name)[:80]}-{digest}"


def copy_adapter(ref: AdapterRef, blobs: BlobStore, directory: Path) -> int:
    """Copy an adapter's files (from the blob store, or its local directory) into ``directory``; return their bytes.

    Raises:
        NotFound: a file is missing.
        Unavailable: the blob store cannot be reached.
    """
    for filename in ADAPTER_FILES:
        if ref.path is not None:
            try:
                shutil.copyfile(Path(ref.path) / filename, directory / filename)
            except FileNotFoundError as exc:
                raise NotFound(f"{ref.path}/{filename}") from exc
            continue
        with (directory / filename).open("wb") as out:
            for chunk in blobs.open(f"{str(ref.blob_prefix).rstrip('/')}/{filename}"):
                out.write(chunk)
    return sum((directory / filename).stat().st_size for filename in ADAPTER_FILES)


def fetch_adapter(ref: AdapterRef, blobs: BlobStore, target: Path) -> int:
    """Copy an adapter into ``target`` through a staging folder beside it, renamed into place; return its bytes.

    An older ``target`` is replaced; one another process renamed into place meanwhile is kept.

    Raises:
        EngineError: ``adapter_unavailable``: 500 when its files are missing, 503 when the blob store is down.
    """
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    try:
        size = copy_adapter(ref, blobs, staging)
        staging.chmod(0o755)  # readable by an inference server running as another user
        shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if not (target / ADAPTER_FILES[-1]).is_file():
                raise
    except NotFound as exc:
        raise EngineError(
            f"model {ref.name!r} cannot be served: its adapter files are missing",
            code="adapter_unavailable",
            status=500,
        ) from exc
    except Unavailable as exc:
        raise EngineError(
            f"model {ref.name!r} cannot be served now: the blob store is unavailable",
            code="adapter_unavailable",
            status=503,
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return size


class AdapterCache:
    """Adapters of every base model, by name, bounded by count in memory and by bytes on disk."""

    def __init__(self, root: Path, blobs: BlobStore, *, max_loaded: int, max_bytes: int) -> None:
        """Create the cache over ``root`` (emptied: folders left by an earlier process are not trusted)."""
        self.root = root
        self.blobs = blobs
        self.max_loaded = max_loaded
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._clock = itertools.count(1)
        self._names = itertools.count(1)
        self._stats = AdapterCacheStats()
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)

    def acquire(self, ref: AdapterRef, host: AdapterHost) -> AdapterLease:
        """Make the adapter loaded in ``host`` and pin it; the caller must ``release`` the lease.

        Raises:
            EngineError: ``adapter_unavailable`` when its blobs are missing, unreadable or not a valid adapter.
        """
        with self._lock:
            entry = self._entries.get(ref.name)
            if entry is None or entry.host is not host:
                entry = self._entries[ref.name] = _Entry(name=ref.name, host=host)
            entry.pins += 1
        try:
            with entry.lock:
                self._make_loaded(entry, ref)
                lease = AdapterLease(name=ref.name, peft_name=str(entry.peft_name), entry=entry)
        except BaseException:
            self._unpin(entry)
            raise
        with self._lock:
            entry.used = next(self._clock)
        self._enforce_bounds()
        return lease

    def release(self, lease: AdapterLease) -> None:
        """Unpin an adapter (its rows are done); a forgotten adapter leaves memory now."""
        self._unpin(lease.entry)

    def forget(self, name: str) -> None:
        """Drop an adapter from memory and disk at once; rows already running on it finish first."""
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry is not None:
                entry.forgotten = True
        shutil.rmtree(self.root / folder_name(name), ignore_errors=True)
        if entry is None:
            return
        with entry.lock:
            self._drop_disk(entry)
        self._unpin(entry, count=0)

    def states(self) -> dict[str, AdapterState]:
        """Return each known adapter's state (for tests and metrics)."""
        with self._lock:
            return {name: entry.state for name, entry in self._entries.items()}

    def stats(self) -> AdapterCacheStats:
        """Return the hits, misses and evictions so far."""
        with self._lock:
            return self._stats

    def _count(self, **more: int) -> None:
        with self._lock:
            stats = self._stats
            self._stats = dataclasses.replace(stats, **{k: getattr(stats, k) + v for k, v in more.items()})

    def _make_loaded(self, entry: _Entry, ref: AdapterRef) -> None:
        """Fetch and load under the entry's lock (a concurrent first request waits here, then finds it loaded)."""
        if entry.forgotten:
            raise EngineError(f"model {ref.name!r} was deleted", code="adapter_unavailable", status=500)
        if entry.peft_name is not None:
            self._count(hits=1)
            return
        self._count(misses=1)
        try:
            if entry.directory is None:
                entry.state = AdapterState.FETCHING
                entry.directory, entry.size = self._fetch(ref)
                entry.state = AdapterState.ON_DISK
            peft_name = f"adapter{next(self._names)}"
            entry.host.load_adapter(entry.directory, peft_name)
        except EngineError:
            self._drop_disk(entry)
            raise
        except UnsupportedAdapterError as exc:
            self._drop_disk(entry)
            raise EngineError(
                f"model {ref.name!r} cannot be served: {exc}", code="adapter_unavailable", status=500
            ) from exc
        except Exception as exc:
            self._drop_disk(entry)
            logger.warning("adapter %s cannot be loaded: %s", ref.name, exc)
            raise EngineError(
                f"model {ref.name!r} cannot be served: its adapter files are not a valid LoRA adapter for this base",
                code="adapter_unavailable",
                status=500,
            ) from exc
        with self._lock:
            entry.peft_name = peft_name
            entry.state = AdapterState.LOADED

    def _fetch(self, ref: AdapterRef) -> tuple[Path, int]:
        """Copy the adapter's files into the cache (a copy even of a local directory: the cache owns what it evicts)."""
        target = self.root / folder_name(ref.name)
        return target, fetch_adapter(ref, self.blobs, target)

    def _drop_disk(self, entry: _Entry) -> None:
        """Remove the entry's folder; an entry neither on disk nor loaded is evicted."""
        if entry.directory is not None:
            shutil.rmtree(entry.directory, ignore_errors=True)
        with self._lock:
            entry.directory, entry.size = None, 0
            if entry.peft_name is None:
                entry.state = AdapterState.EVICTED

    def _unpin(self, entry: _Entry, count: int = 1) -> None:
        """Drop ``count`` pins; an unpinned forgotten or failed entry is removed, then the bounds are enforced."""
        unload: str | None = None
        with self._lock:
            entry.pins -= count
            if entry.pins == 0 and entry.forgotten:
                unload, entry.peft_name, entry.state = entry.peft_name, None, AdapterState.EVICTED
            if entry.pins == 0 and entry.state == AdapterState.EVICTED and self._entries.get(entry.name) is entry:
                del self._entries[entry.name]
        if unload is not None:
            entry.host.delete_adapter(unload)
        self._enforce_bounds()

    def _enforce_bounds(self) -> None:
        """Evict least recently used unpinned adapters until the count and byte bounds hold (or all are pinned)."""
        unload: list[tuple[_Entry, str]] = []
        remove: list[Path] = []
        with self._lock:
            idle = sorted((e for e in self._entries.values() if e.pins == 0), key=lambda e: e.used)
            loaded = sum(e.peft_name is not None for e in self._entries.values())
            on_disk = sum(e.size for e in self._entries.values() if e.directory is not None)
            for entry in idle:
                if loaded > self.max_loaded and entry.peft_name is not None:
                    unload.append((entry, entry.peft_name))
                    entry.peft_name, entry.state = None, AdapterState.ON_DISK
                    loaded -= 1
                if on_disk > self.max_bytes and entry.directory is not None:
                    remove.append(entry.directory)
                    on_disk -= entry.size
                    entry.directory, entry.size = None, 0
                if entry.peft_name is None and entry.directory is None:
                    entry.state = AdapterState.EVICTED
                    del self._entries[entry.name]
        if unload or remove:
            self._count(evicted_from_memory=len(unload), evicted_from_disk=len(remove))
        for entry, peft_name in unload:
            entry.host.delete_adapter(peft_name)
            logger.info("evicted adapter %s from memory", entry.name)
        for directory in remove:
            shutil.rmtree(directory, ignore_errors=True)

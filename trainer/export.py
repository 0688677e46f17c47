"""What an export writes: a job's adapter in the PEFT layout, merged into its base model, or as one GGUF file.

- ``adapter``: ``adapter_config.json`` + ``adapter_model.safetensors`` in a folder, as a tar: what
  ``PeftModel.from_pretrained`` and vLLM's ``--lora-modules`` load. ``base_model_name_or_path`` names the base
  model as a user can find it: the Hugging Face repo it was configured from, else the id this server serves it as.
- ``merged``: the base model with the adapter merged in (PEFT's ``merge_and_unload``, in float32, then cast to the
  export's dtype), saved as transformers saves a model (config, safetensors, generation config) with the base
  model's tokenizer and chat template, in a folder, as a tar.
- ``gguf``: the same merged model written by `trainer/gguf.py` (llama-architecture bases only).

Tars are streamed into the blob store as they are made (no second copy on disk); the model files are written to
a temporary directory first. Everything here runs on the worker's CPU.
"""

from __future__ import annotations

import json
import re
import tarfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunewright.modeling.registry import PACKAGE_PREFIX

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tunewright.storage.settings import Settings

FORMATS = ("adapter", "merged", "gguf")
DTYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}
"""An export's `dtype` and the torch dtype it names."""
CHUNK_BYTES = 1024 * 1024
_LOCAL_SOURCE = re.compile(r"^(/|\.{1,2}/|~)")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ExportError(Exception):
    """An export that cannot be written; it fails with ``error = {code, message, param}``."""

    def __init__(self, code: str, message: str, *, param: str | None = None) -> None:
        """Keep the error object's fields."""
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class ExportSource:
    """What an export reads: the model's name, its base model (id and local directory) and its adapter's files."""

    model_id: str
    base_model: str
    base_dir: Path
    adapter_dir: Path


@dataclass(frozen=True, slots=True)
class Artifact:
    """What an export produced: the file's name, and its bytes as chunks (a tar streamed as it is made)."""

    filename: str
    chunks: Iterator[bytes]


def artifact_stem(model_id: str) -> str:
    """A file name's stem for a model: ``ft:tiny:acme::Ab3d:ckpt-step-3`` → ``tiny-acme-Ab3d-ckpt-step-3``."""
    return _UNSAFE.sub("-", model_id.removeprefix("ft:")).strip("-") or "model"


def base_model_reference(base_model: str, settings: Settings) -> str:
    """How an exported adapter names its base model: the Hugging Face repo it was configured from, else its id."""
    source = settings.base_models.get(base_model, "")
    if source and not source.startswith(PACKAGE_PREFIX) and not _LOCAL_SOURCE.match(source):
        return source
    return base_model


def base_dtype(base_dir: Path) -> str:
    """The export dtype of the base model's weights as its config.json states them (``f32`` when it says none)."""
    try:
        config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "f32"
    stated = config.get("dtype") or config.get("torch_dtype")
    return next((name for name, torch_name in DTYPES.items() if torch_name == stated), "f32")


def export_adapter(source: ExportSource, work: Path, *, base_reference: str) -> Artifact:
    """The adapter's PEFT files in a folder, as a tar, its config naming ``base_reference`` as its base model."""
    stem = f"{artifact_stem(source.model_id)}-adapter"
    folder = work / stem
    folder.mkdir(parents=True)
    config = json.loads((source.adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_reference
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (source.adapter_dir / "adapter_model.safetensors").rename(folder / "adapter_model.safetensors")
    return Artifact(filename=f"{stem}.tar", chunks=tar_chunks(folder, stem))


def export_merged(source: ExportSource, work: Path, *, dtype: str) -> Artifact:
    """The merged model, cast to ``dtype``, with the base model's tokenizer, in a folder, as a tar."""
    import torch

    from tunewright.modeling.loading import load_tokenizer

    stem = f"{artifact_stem(source.model_id)}-{dtype}"
    folder = work / stem
    model = merged_model(source).to(getattr(torch, DTYPES[dtype]))
    model.save_pretrained(folder)
    del model
    load_tokenizer(source.base_dir).save_pretrained(folder)
    return Artifact(filename=f"{stem}.tar", chunks=tar_chunks(folder, stem))


def check_gguf_base(source: ExportSource) -> None:
    """Refuse a base model GGUF export cannot write before any weight is loaded.

    Raises:
        ExportError: ``unsupported_model`` (param ``format``), saying why.
    """
    from transformers import AutoConfig

    from tunewright.trainer.gguf import UnsupportedModelError, check_architecture, pre_tokenizer_name

    try:
        check_architecture(AutoConfig.from_pretrained(source.base_dir, local_files_only=True))
        pre_tokenizer_name(source.base_dir)
    except UnsupportedModelError as exc:
        raise not_gguf(source, exc) from None


def not_gguf(source: ExportSource, reason: Exception) -> ExportError:
    """The error of an export whose base model cannot be written as GGUF, saying why."""
    message = f"The base model {source.base_model} cannot be exported as GGUF: {reason}."
    return ExportError("unsupported_model", message, param="format")


def export_gguf(source: ExportSource, work: Path, *, quantization: str) -> Artifact:
    """The merged model as one GGUF file with ``quantization`` (``f16`` or ``q8_0``), tokenizer and template included.

    Raises:
        ExportError: the base model cannot be written as GGUF.
    """
    from tunewright.modeling.loading import load_tokenizer
    from tunewright.trainer.gguf import UnsupportedModelError, write_gguf

    check_gguf_base(source)
    filename = f"{artifact_stem(source.model_id)}-{quantization}.gguf"
    path = work / filename
    model = merged_model(source)
    try:
        write_gguf(
            model,
            load_tokenizer(source.base_dir),
            source.base_dir,
            path,
            quantization=quantization,
            name=source.model_id,
        )
    except UnsupportedModelError as exc:
        raise not_gguf(source, exc) from None
    finally:
        del model
    return Artifact(filename=filename, chunks=file_chunks(path))


def merged_model(source: ExportSource) -> Any:
    """The base model (float32, CPU) with the adapter merged into its weights and the PEFT wrapper removed.

    When the adapter changes the input or output embedding of a model that ties them, they are untied first:
    merging into the shared tensor would change the other one too.
    """
    from peft import PeftModel

    from tunewright.modeling.loading import load_model

    base = load_model(source.base_dir)
    if adapts_tied_embeddings(base, source.adapter_dir):
        untie_embeddings(base)
    return PeftModel.from_pretrained(base, source.adapter_dir).merge_and_unload()


def adapts_tied_embeddings(model: Any, adapter_dir: Path) -> bool:
    """Whether the model ties its embeddings and the adapter's weights change either of them."""
    from safetensors import safe_open

    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if output is None or output.weight is not embedding.weight:
        return False
    tied = {name for name, module in model.named_modules() if module is output or module is embedding}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as handle:
        adapted = {key.removeprefix("base_model.model.").split(".lora_")[0] for key in handle.keys()}  # noqa: SIM118
    return bool(adapted & tied)


def untie_embeddings(model: Any) -> None:
    """Give the output embedding a copy of the tied weights of its own, and say so in the config."""
    import torch

    output = model.get_output_embeddings()
    output.weight = torch.nn.Parameter(output.weight.detach().clone())
    model.config.tie_word_embeddings = False


def tar_chunks(folder: Path, root: str) -> Iterator[bytes]:
    """A ustar/PAX archive of ``folder``'s files under ``root/``, yielded as it is read (for a streaming put)."""
    now = int(time.time())
    written = 0

    def header(name: str, *, size: int = 0, directory: bool = False) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = size, now
        info.type, info.mode = (tarfile.DIRTYPE, 0o755) if directory else (tarfile.REGTYPE, 0o644)
        return info.tobuf(format=tarfile.PAX_FORMAT)

    block = header(root, directory=True)
    written += len(block)
    yield block
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        block = header(f"{root}/{path.relative_to(folder).as_posix()}", size=size)
        written += len(block)
        yield block
        for chunk in file_chunks(path):
            written += len(chunk)
            yield chunk
        if size % tarfile.BLOCKSIZE:
            padding = tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE
            written += padding
            yield b"\0" * padding
    end = 2 * tarfile.BLOCKSIZE  # two zero blocks end the archive; the record is filled as tar writes it
    end += -(written + end) % tarfile.RECORDSIZE
    yield b"\0" * end


def file_chunks(path: Path) -> Iterator[bytes]:
    """A file's bytes in chunks of `CHUNK_BYTES`."""
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk

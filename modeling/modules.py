"""Which modules of a base model a LoRA adapter can target, read from its weight files' headers (no torch).

`lora_target_modules` names modules as PEFT matches a list of them: a module's full dotted name, or a dotted
suffix of one (`q_proj`, `self_attn.q_proj`). Only modules with a 2-D weight (linear layers, embeddings) take a
LoRA adapter; a name that matches none of them fails PEFT when the job starts, so the API refuses it at creation
and the worker again before it loads the model (for a model that was not on the API's machine).

A safetensors file starts with the little-endian length of a JSON header naming every tensor and its shape, so
the names come from a few kilobytes of each file, whatever the model's size.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

MAX_HEADER_BYTES = 100 * 1024 * 1024
ALWAYS_PRESENT = frozenset({"lm_head"})
"""Every causal LM has its output head, whose weight the files omit when it is tied to the embeddings."""


def adaptable_modules(model_dir: Path) -> frozenset[str] | None:
    """The full names of the modules with a 2-D weight, or None when the model has no safetensors files."""
    return _adaptable_modules(str(model_dir))


@functools.lru_cache(maxsize=16)
def _adaptable_modules(model_dir: str) -> frozenset[str] | None:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    names: set[str] = set(ALWAYS_PRESENT)
    for path in files:
        for tensor, info in _header(path).items():
            if tensor.endswith(".weight") and isinstance(info, dict) and len(info.get("shape", ())) == 2:
                names.add(tensor.removesuffix(".weight"))
    return frozenset(names)


def _header(path: Path) -> dict[str, object]:
    with path.open("rb") as file:
        (size,) = struct.unpack("<Q", file.read(8))
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"{path.name}: a safetensors header of {size} bytes")
        header = json.loads(file.read(size))
    return header if isinstance(header, dict) else {}


def unknown_target_modules(modules: frozenset[str], targets: Sequence[str]) -> list[str]:
    """The names in `targets` that match no module of `modules` (PEFT's rule: the full name or a dotted suffix)."""
    return [
        target
        for target in targets
        if target not in modules and not any(module.endswith("." + target) for module in modules)
    ]


def target_modules_message(unknown: Sequence[str], base_model: str) -> str:
    """The message refusing `unknown` target modules of `base_model`."""
    names = ", ".join(f"'{name[:80]}'" for name in unknown[:5])
    return (
        f"Invalid 'lora_target_modules': {names} name no linear layer of {base_model} (use module names such as "
        "'q_proj' or 'self_attn.q_proj', or 'all-linear')."
    )


class UnknownTargetModulesError(ValueError):
    """`lora_target_modules` holds names that match no linear layer of the base model."""

    def __init__(self, unknown: Sequence[str], base_model: str) -> None:
        """Name the unknown modules and the model."""
        super().__init__(target_modules_message(unknown, base_model))


def check_target_modules(model_dir: Path, targets: str | Sequence[str], base_model: str) -> None:
    """Raise `UnknownTargetModulesError` when a listed target matches no module of the model in `model_dir`.

    `"all-linear"` and a model without safetensors files (whose names cannot be read here) pass.
    """
    if isinstance(targets, str):
        return
    modules = adaptable_modules(model_dir)
    unknown = unknown_target_modules(modules, targets) if modules is not None else []
    if unknown:
        raise UnknownTargetModulesError(unknown, base_model)

"""Per-row gathered LoRA: many adapters of one base model in one batched forward (what Punica and S-LoRA do).

Every base ``Linear`` that some loaded adapter targets gets, once, a ``GatheredLinear`` (a forward hook) that keeps
the loaded adapters' matrices stacked: ``A: [slots, r_max, in]`` and ``B: [slots, out, r_max]`` with the scaling
folded into ``B``. Slot 0 stays zero (base rows); ranks below ``r_max`` are zero-padded, and an adapter that
does not target a layer has a zero slot there, so both add exactly nothing. A forward sets one adapter slot
per row (``LoRAStacks.use``); each layer then computes ``base(x) + (x @ A[idx]ᵀ) @ B[idx]ᵀ`` with one gather
and two ``torch.bmm``. During decoding the rows and their adapters stay the same from step to step, so the
gathered ``[rows, r, in]`` weights of a decode step (``x: [rows, 1, in]``) are kept until the rows or the
stacks change. A batch of base rows only runs the base layers; a batch on one adapter uses plain matmuls.

Adapters are read from their PEFT files (``adapter_config.json``, ``adapter_model.safetensors``) without PEFT.
Only plain LoRA on ``Linear`` layers is served (no DoRA, bias, rank or alpha patterns, saved modules…): an
adapter using anything else is refused with ``UnsupportedAdapterError`` rather than served with wrong numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import torch

PREFIX = "base_model.model."
SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}
FALSY_FIELDS = (
    "use_dora",
    "modules_to_save",
    "fan_in_fan_out",
    "rank_pattern",
    "alpha_pattern",
    "trainable_token_indices",
    "target_parameters",
    "lora_bias",
    "layer_replication",
    "alora_invocation_tokens",
    "use_qalora",
)


class UnsupportedAdapterError(ValueError):
    """The adapter's files are readable but use something the gathered path does not compute."""


@dataclass(frozen=True)
class LoRAWeights:
    """One adapter read from disk: per layer path, ``A: [r, in]`` and ``B: [out, r]`` with the scaling in ``B``."""

    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def rank(self) -> int:
        """The largest rank of any of its layers."""
        return max(a.shape[0] for a, _ in self.layers.values())


def read_adapter(directory: Path) -> LoRAWeights:
    """Read and check a PEFT LoRA adapter directory.

    Raises:
        UnsupportedAdapterError: It is not plain LoRA on linear layers.
        ValueError, OSError: Its files are missing or corrupt.
    """
    from safetensors.torch import load_file

    config = json.loads((directory / "adapter_config.json").read_text())
    scaling = check_config(config)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(directory / "adapter_model.safetensors").items():
        path, part = split_key(key)
        pairs.setdefault(path, {})[part] = tensor
    if not pairs:
        raise UnsupportedAdapterError("it has no LoRA weights")
    layers = {}
    for path, pair in pairs.items():
        if set(pair) != {"A", "B"} or pair["A"].ndim != 2 or pair["B"].shape[1:] != pair["A"].shape[:1]:
            raise UnsupportedAdapterError(f"its LoRA matrices of {path} do not form a pair A [r, in], B [out, r]")
        rank = pair["A"].shape[0]
        layers[path] = (pair["A"], pair["B"] * scaling(rank))
    return LoRAWeights(layers)


def check_config(config: dict[str, Any]) -> Any:
    """Refuse anything but plain LoRA; return the scaling as a function of the rank (``alpha/r``, rsLoRA)."""
    if config.get("peft_type", "LORA") != "LORA":
        raise UnsupportedAdapterError(f"it is a {config.get('peft_type')} adapter, only LoRA is served")
    if config.get("bias", "none") != "none":
        raise UnsupportedAdapterError(f"it trains biases (bias={config['bias']!r}), which is not supported")
    used = [name for name in FALSY_FIELDS if config.get(name)]
    if used:
        raise UnsupportedAdapterError(f"it uses {', '.join(used)}, which is not supported (plain LoRA only)")
    alpha = float(config.get("lora_alpha", 8))
    if config.get("use_rslora"):
        return lambda rank: alpha / math.sqrt(rank)
    return lambda rank: alpha / rank


def split_key(key: str) -> tuple[str, str]:
    """Map ``base_model.model.<path>.lora_A.weight`` to ``(<path>, "A")``."""
    for suffix, part in SUFFIXES.items():
        if key.startswith(PREFIX) and key.endswith(suffix):
            return key[len(PREFIX) : -len(suffix)], part
    raise UnsupportedAdapterError(f"it holds {key!r}, which is not a LoRA matrix of a linear layer")


@dataclass(frozen=True)
class RowPlan:
    """The adapter slots of one forward's rows: ``index`` ``[rows]``, ``single`` when all rows share one slot."""

    index: torch.Tensor
    key: tuple[int, ...]
    single: int | None
    decode: bool


class LoRAStacks:
    """The loaded adapters of one base model, by name, as slots of every wrapped layer's stacks."""

    def __init__(self, model: Any) -> None:
        """Serve adapters on ``model`` (its target layers are wrapped on first use)."""
        self.model = model
        self.layers: dict[str, GatheredLinear] = {}
        self.slots: dict[str, int] = {}
        self.capacity = 4
        self.rank = 1
        self.version = 0
        self.plan: RowPlan | None = None

    def add(self, name: str, weights: LoRAWeights) -> None:
        """Install an adapter under ``name`` (its layers are checked against the model before anything changes)."""
        targets = {path: self._target(path, a, b) for path, (a, b) in weights.layers.items()}
        used = set(self.slots.values())
        slot = next(k for k in range(1, len(used) + 2) if k not in used)
        if slot >= self.capacity or weights.rank > self.rank:
            self._resize(max(self.capacity * (2 if slot >= self.capacity else 1), slot + 1), weights.rank)
        for path, (a, b) in weights.layers.items():
            layer = self.layers.get(path) or self._wrap(path, targets[path])
            layer.set(slot, a, b)
        self.slots[name] = slot
        self.version += 1

    def remove(self, name: str) -> None:
        """Zero an adapter's slot in every layer and free it (no-op if absent)."""
        slot = self.slots.pop(name, None)
        if slot is not None:
            for layer in self.layers.values():
                layer.clear(slot)
            self.version += 1

    def use(self, names: list[str], *, decode: bool, base: str) -> None:
        """Set the slots of the rows about to run (``base`` names base rows)."""
        import torch

        key = tuple(0 if name == base else self.slots[name] for name in names)
        single = key[0] if len(set(key)) == 1 else None
        device = next(iter(self.layers.values())).A.device if self.layers else "cpu"
        index = torch.tensor(key, dtype=torch.long, device=device)
        self.plan = RowPlan(index=index, key=key, single=single, decode=decode)

    def _target(self, path: str, a: torch.Tensor, b: torch.Tensor) -> Any:
        """Return the base ``Linear`` at ``path``, checking the adapter's shapes against it."""
        import torch

        try:
            module = self.model.get_submodule(path)
        except AttributeError as exc:
            raise UnsupportedAdapterError(f"the base model has no layer {path!r}") from exc
        if not isinstance(module, torch.nn.Linear):
            raise UnsupportedAdapterError(f"its layer {path!r} is not a linear layer")
        if a.shape[1] != module.in_features or b.shape[0] != module.out_features:
            raise UnsupportedAdapterError(f"its shapes for {path!r} do not match the base model")
        return module

    def _wrap(self, path: str, linear: Any) -> GatheredLinear:
        layer = GatheredLinear(linear, self, capacity=self.capacity, rank=self.rank)
        self.layers[path] = layer
        return layer

    def _resize(self, capacity: int, rank: int) -> None:
        self.capacity, self.rank = capacity, max(self.rank, rank)
        for layer in self.layers.values():
            layer.resize(self.capacity, self.rank)


class GatheredLinear:
    """The stacked LoRA matrices of every loaded adapter on one base ``Linear``, added per row by a forward hook.

    A forward hook rather than a wrapper module: the model's modules, names and state dict stay as they were,
    and this module needs no ``torch.nn.Module`` subclass at import time (torch is imported lazily here).
    """

    def __init__(self, base: Any, stacks: LoRAStacks, *, capacity: int, rank: int) -> None:
        """Hook ``base`` with zero stacks of ``capacity`` slots of rank ``rank``."""
        import torch

        self.base = base
        self.stacks = stacks
        weight = base.weight
        self.A = torch.zeros(capacity, rank, base.in_features, dtype=weight.dtype, device=weight.device)
        self.B = torch.zeros(capacity, base.out_features, rank, dtype=weight.dtype, device=weight.device)
        self.present: set[int] = set()
        self._gathered: tuple[Any, Any, torch.Tensor, torch.Tensor] | None = None
        self.handle = base.register_forward_hook(self.hook)

    def set(self, slot: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Write one adapter's matrices into ``slot`` (rank padded with zeros)."""
        self.clear(slot)
        self.A[slot, : a.shape[0]] = a.to(self.A.dtype)
        self.B[slot, :, : b.shape[1]] = b.to(self.B.dtype)
        self.present.add(slot)

    def clear(self, slot: int) -> None:
        """Zero ``slot``."""
        self.A[slot].zero_()
        self.B[slot].zero_()
        self.present.discard(slot)
        self._gathered = None

    def resize(self, capacity: int, rank: int) -> None:
        """Grow the stacks to ``capacity`` slots of rank ``rank``, keeping their contents."""
        import torch.nn.functional as F  # noqa: N812 - the usual name

        old = self.A.shape
        self.A = F.pad(self.A, (0, 0, 0, rank - old[1], 0, capacity - old[0]))
        self.B = F.pad(self.B, (0, rank - old[1], 0, 0, 0, capacity - old[0]))
        self._gathered = None

    def hook(self, module: Any, inputs: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        """Return ``base(x)`` plus each row's own adapter's LoRA term (``x: [rows, seq, in]``)."""
        import torch
        import torch.nn.functional as F  # noqa: N812 - the usual name

        plan = self.stacks.plan
        if plan is None or not self.present.intersection(plan.key):
            return y
        x = inputs[0]
        if plan.single is not None:
            return y + F.linear(F.linear(x, self.A[plan.single]), self.B[plan.single])
        a_t, b_t = self._gather(plan)
        return y + torch.bmm(torch.bmm(x, a_t), b_t)

    def _gather(self, plan: RowPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the rows' ``Aᵀ [rows, in, r]`` and ``Bᵀ [rows, r, out]``, kept across decode steps."""
        cached = self._gathered
        if cached is not None and cached[0] == plan.key and cached[1] == self.stacks.version:
            return cached[2], cached[3]
        a_t = self.A.index_select(0, plan.index).transpose(1, 2)
        b_t = self.B.index_select(0, plan.index).transpose(1, 2)
        if plan.decode:
            self._gathered = (plan.key, self.stacks.version, a_t, b_t)
        return a_t, b_t
